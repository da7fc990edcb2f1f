"""Trend inputs (stream_lstm.learner.trend) against a plain loop over the events."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_lstm.learner.batch_columns import group_by_slot
from stream_lstm.learner.trend import trend_deviations
from stream_lstm.messages.trend_scales import trend_half_lives, trend_rates


def _by_loop(values, present, event_slots, start, rates):
    """Each event in turn: its deviation from its key's averages, then the averages move."""
    distinct = list(dict.fromkeys(event_slots.tolist()))
    averages = {slot: start[j].copy() for j, slot in enumerate(distinct)}
    deviations = np.zeros((len(values), rates.size, values.shape[1]))
    for i, slot in enumerate(event_slots.tolist()):
        for s, rate in enumerate(rates):
            for f in range(values.shape[1]):
                if present[i, f]:
                    deviations[i, s, f] = values[i, f] - averages[slot][s, f]
                    averages[slot][s, f] += rate * deviations[i, s, f]
    return deviations, np.stack([averages[slot] for slot in distinct])


@st.composite
def _batches(draw):
    n_events = draw(st.integers(1, 150))
    n_keys = draw(st.integers(1, 6))
    n_features = draw(st.integers(1, 3))
    slots = np.array(draw(st.lists(st.integers(0, n_keys - 1), min_size=n_events, max_size=n_events)))
    finite = st.floats(-10, 10, allow_nan=False)
    values = np.array(draw(st.lists(finite, min_size=n_events * n_features, max_size=n_events * n_features)))
    some_missing = draw(st.booleans())
    missing = draw(st.lists(st.booleans(), min_size=values.size, max_size=values.size))
    present = ~np.array(missing) if some_missing else np.ones(values.size, bool)
    scales = draw(st.integers(1, 3))
    distinct = len(set(slots.tolist()))
    size = distinct * scales * n_features
    start = np.array(draw(st.lists(finite, min_size=size, max_size=size)))
    return (
        values.reshape(n_events, n_features),
        present.reshape(n_events, n_features),
        slots,
        start.reshape(distinct, scales, n_features),
        trend_rates(scales),
    )


@settings(max_examples=150, deadline=None)
@given(_batches())
def test_deviations_equal_a_loop_over_the_events(batch):
    values, present, slots, start, rates = batch
    deviations, end = trend_deviations(values, present, group_by_slot(slots), start, rates)
    expected, expected_end = _by_loop(values, present, slots, start, rates)
    np.testing.assert_allclose(deviations, expected, atol=1e-9)
    np.testing.assert_allclose(end, expected_end, atol=1e-9)


def test_a_missing_value_has_no_deviation_and_moves_no_average():
    values = np.array([[2.0], [np.nan], [2.0]])
    present = ~np.isnan(values)
    groups = group_by_slot(np.zeros(3, int))
    deviations, end = trend_deviations(values, present, groups, np.zeros((1, 1, 1)), np.array([0.5]))
    assert deviations[:, 0, 0].tolist() == [2.0, 0.0, 1.0]
    assert end.ravel().tolist() == [1.5]


def test_half_lives_grow_by_four_and_halve_the_distance():
    assert trend_half_lives(0) == []
    assert trend_half_lives(2) == [4, 16]
    for half_life, rate in zip(trend_half_lives(3), trend_rates(3), strict=True):
        assert (1 - rate) ** half_life == np.float64(0.5) or abs((1 - rate) ** half_life - 0.5) < 1e-12
