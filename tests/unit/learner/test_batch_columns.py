"""The learner's vectorised batch encoding against the per-event loop it replaced."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import pytest

from stream_lstm.learner import batch_columns
from stream_lstm.learner.batch_columns import _grouped_in_python, group_by_slot
from stream_lstm.learner.key_state import NO_LABEL
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.messages.events import Event


def messy_batch(n_events: int, n_keys: int, seed: int) -> list[Event]:
    """Keys repeating within the batch, missing labels and timestamps, optional features."""
    rng = random.Random(seed)
    events = []
    for _ in range(n_events):
        features = {"x": rng.gauss(0, 1)}
        if rng.random() < 0.4:
            features["y"] = rng.random()
        if rng.random() < 0.3:
            features = dict(reversed(list(features.items())))  # another order of the same names
        events.append(
            Event(
                key=f"k{rng.randrange(n_keys)}",
                ts=None if rng.random() < 0.25 else rng.uniform(0, 100),
                features=features,
                label=None if rng.random() < 0.3 else rng.randrange(2),
            )
        )
    return events


def loop_reference(
    events: list[Event], row: np.ndarray, prev_label: np.ndarray, last_ts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The per-event loop of earlier versions: each event's previous label and time gap, and
    each key's last label and timestamp after the batch."""
    last_label = prev_label.copy()
    last_ts = last_ts.copy()
    before = np.empty(len(events), dtype=np.int8)
    gap = np.full(len(events), np.nan)
    for i, event in enumerate(events):
        r = row[i]
        before[i] = last_label[r]
        if event.label is not None:
            last_label[r] = event.label
        if event.ts is not None:
            if last_ts[r] == last_ts[r]:
                gap[i] = math.log1p(max(event.ts - last_ts[r], 0.0))
            last_ts[r] = event.ts
    return before, gap, last_label, last_ts


@pytest.mark.parametrize(
    ("n_events", "n_keys", "seed"), [(1, 1, 0), (50, 3, 1), (300, 40, 2), (200, 1000, 3)]
)
def test_encoding_carries_labels_and_timestamps_like_the_per_event_loop(
    n_events: int, n_keys: int, seed: int
) -> None:
    learner = LSTMLearner(hidden_size=4, tbptt_steps=3, adapt_scaler=False, device="cpu")
    for warm_seed in range(3):  # keys with a history: known labels and timestamps, some not
        batch = messy_batch(n_events, n_keys, seed=100 + warm_seed)
        learner.predict_batch(batch)
        learner.learn_batch(batch)
    events = messy_batch(n_events, n_keys, seed)
    groups = group_by_slot(learner.keys.lookup([e.key for e in events]))
    store_labels = learner.keys.prev_label[groups.slots].copy()
    store_ts = learner.keys.last_ts[groups.slots].copy()
    label_values = np.array([e.label for e in events], dtype=np.float64)
    encoded = learner._encode(events, groups, groups.slots, label_values)
    (raw, columns), inputs, last_label, last_ts, _, _ = encoded
    before, gap, want_label, want_ts = loop_reference(events, groups.row, store_labels, store_ts)

    assert columns.tolist() == [*sorted(learner.feature_columns.values()), learner.max_features]
    np.testing.assert_allclose(raw[:, -1], gap, rtol=1e-12)
    np.testing.assert_array_equal(last_label, want_label)
    assert last_label.dtype == np.int8
    np.testing.assert_array_equal(last_ts, want_ts)
    flag = inputs[:, learner.max_features + 2]
    np.testing.assert_array_equal(flag, (before == NO_LABEL).astype(np.float32))
    np.testing.assert_array_equal(
        inputs[:, learner.max_features + 1], np.where(before == NO_LABEL, 0.0, 2.0 * before - 1.0)
    )


@pytest.mark.parametrize("copies", [1, 20])  # 6 and 120 events: grouped in Python, and by np.unique
def test_group_by_slot_orders_keys_by_first_appearance(copies: int) -> None:
    slots = np.array([9, 4, 9, 2, 4, 9] * copies)
    groups = group_by_slot(slots)
    n = len(slots)
    assert groups.slots.tolist() == [9, 4, 2]
    assert groups.row.tolist() == [0, 1, 0, 2, 1, 0] * copies
    assert groups.counts.tolist() == [3 * copies, 2 * copies, copies]
    rank_of = {9: iter(range(n)), 4: iter(range(n)), 2: iter(range(n))}
    assert groups.rank.tolist() == [next(rank_of[s]) for s in slots.tolist()]
    assert groups.order.tolist() == sorted(range(n), key=lambda i: (groups.row[i], i))
    assert groups.starts.tolist() == [0, 3 * copies, 5 * copies]


def test_grouping_in_python_gives_the_groups_of_np_unique(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    cases = [rng.integers(0, n_keys, n_events) * 7 for n_events in (2, 10, 64, 300) for n_keys in (1, 3, 40)]
    monkeypatch.setattr(batch_columns, "SMALL_BATCH", 0)  # group_by_slot: always np.unique's way
    for slots in cases:
        if len(set(slots.tolist())) == len(slots):
            continue  # every key once: neither way runs
        in_python, by_unique = _grouped_in_python(slots.tolist()), group_by_slot(slots)
        for field in ("slots", "row", "rank", "counts", "order", "starts"):
            np.testing.assert_array_equal(getattr(in_python, field), getattr(by_unique, field))


@pytest.mark.parametrize("n_events", [2, 17, 64])
def test_a_batch_of_one_key_is_grouped_as_np_unique_groups_it(
    n_events: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    slots = np.full(n_events, 5)
    shortcut = group_by_slot(slots)  # a batch of at most SMALL_BATCH events of one key
    monkeypatch.setattr(batch_columns, "SMALL_BATCH", 0)
    by_unique = group_by_slot(slots)
    for field in ("slots", "row", "rank", "counts", "order", "starts"):
        np.testing.assert_array_equal(getattr(shortcut, field), getattr(by_unique, field))
        assert getattr(shortcut, field).dtype == getattr(by_unique, field).dtype


def features_by_loop(learner: LSTMLearner, events: list[Event]) -> np.ndarray:
    raw = np.full((len(events), learner.max_features + 1), np.nan)
    for i, event in enumerate(events):
        for name, value in event.features.items():
            column = learner.feature_columns.get(name)
            if column is not None:
                raw[i, column] = value
    return raw


@pytest.mark.parametrize("mapping", [dict, MappingProxyType])
def test_features_read_a_column_at_a_time_land_where_the_loop_puts_them(mapping: type[Mapping]) -> None:
    learner = LSTMLearner(hidden_size=4, max_features=3, device="cpu")
    first = [
        Event(key="a", features=mapping({"p": 1.0, "q": 2.0})),
        Event(key="b", features=mapping({"r": 3.0})),
    ]
    raw = np.full((2, 4), np.nan)
    learner._fill_features(first, raw)  # new names: the loop, columns by first appearance
    assert learner.feature_columns == {"p": 0, "q": 1, "r": 2}
    more = [
        Event(key="a", features=mapping({"r": 5.0, "p": 6.0, "late": 9.0})),  # "late": no column left
        Event(key="c", features=mapping({"q": 7.0})),
    ]
    learner._fill_features(more, np.full((2, 4), np.nan))
    assert learner.features_dropped == 1 and "late" not in learner.feature_columns
    events = [
        Event(key="a", features=mapping({"q": -1.0, "late": 4.0})),
        Event(key="b", features=mapping({})),
        Event(key="c", features=mapping({"r": 2.5, "p": 0.5, "q": True})),
    ]
    raw = np.full((3, 4), np.nan)
    learner._fill_features(events, raw)  # every name known: a column at a time (for plain dicts)
    np.testing.assert_array_equal(raw, features_by_loop(learner, events))
