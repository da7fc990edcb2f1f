"""The generated stream families: seeded, keyed as asked, and with the documented best scores."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_lstm.messages.events import Event
from stream_lstm.offline.families import (
    DAY,
    SUITE,
    GeneratedStream,
    hidden_regimes,
    lagged_xor,
    no_signal,
    noisy_labels,
    seasonal,
    slow_drift,
    suite_stream,
)

N = 20_000


def agreement(events: list[Event], predicted: list[int]) -> float:
    return sum(e.label == p for e, p in zip(events, predicted, strict=True)) / len(events)


def within_sampling_error(observed: float, expected: float, n: int) -> bool:
    """``observed`` is within 5 standard errors of a proportion ``expected`` over ``n`` events."""
    return abs(observed - expected) <= 5 * math.sqrt(max(expected * (1 - expected), 0.01) / n)


def oracle_accuracy(stream: GeneratedStream) -> float:
    return agreement(stream.events, [int(p >= 0.5) for p in stream.oracle])


@pytest.mark.parametrize("name", sorted(SUITE))
def test_every_suite_stream_is_deterministic_by_seed(name: str) -> None:
    first, again, other = (suite_stream(name, 500, seed) for seed in (4, 4, 5))
    assert first == again
    assert first.events != other.events


@pytest.mark.parametrize("name", sorted(SUITE))
def test_every_suite_stream_is_well_formed_and_its_oracle_reaches_its_best_accuracy(name: str) -> None:
    stream = suite_stream(name, N)
    events = stream.events
    assert len(events) == len(stream.oracle) == N
    assert all(e.label in (0, 1) and e.ts is not None for e in events)
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(events))  # type: ignore[operator]
    assert all(0.0 <= p <= 1.0 for p in stream.oracle)
    keys = {e.key for e in events}
    assert (keys == {""}) == name.endswith("_unkeyed")
    assert within_sampling_error(oracle_accuracy(stream), stream.best_accuracy, N)
    assert 0.0 < stream.best_log_loss <= math.log(2) + 1e-12


def test_xor_labels_are_the_xor_of_the_keys_signals_at_the_lags() -> None:
    stream = lagged_xor(N, n_keys=50, lags=(2, 5), noise=0.1, seed=1)
    signals: dict[str, list[float]] = defaultdict(list)
    predicted, determined = [], []
    for event in stream.events:
        past = signals[event.key]
        known = len(past) >= 5
        predicted.append(int((past[-2] > 0) != (past[-5] > 0)) if known else 0)
        determined.append(known)
        past.append(event.features["a"])
    # 50 keys x 5 undetermined events, at 0.5; the rest at 1 - noise.
    assert stream.best_accuracy == pytest.approx((250 * 0.5 + (N - 250) * 0.9) / N)
    events = [e for e, known in zip(stream.events, determined, strict=True) if known]
    mine = [p for p, known in zip(predicted, determined, strict=True) if known]
    assert within_sampling_error(agreement(events, mine), 0.9, len(events))


def test_the_current_features_alone_say_nothing_about_an_xor_label() -> None:
    stream = lagged_xor(N, n_keys=50, seed=2)
    assert within_sampling_error(
        agreement(stream.events, [int(e.features["a"] > 0) for e in stream.events]), 0.5, N
    )


def test_noisy_labels_follow_the_previous_signal_with_the_noise_rate() -> None:
    stream = noisy_labels(N, n_keys=40, noise=0.2, seed=3)
    previous: dict[str, float] = {}
    predicted, later = [], []
    for event in stream.events:
        later.append(event.key in previous)
        predicted.append(int(previous.get(event.key, 0.0) > 0))
        previous[event.key] = event.features["a"]
    assert stream.best_accuracy == pytest.approx((40 * 0.5 + (N - 40) * 0.8) / N)
    events = [e for e, seen in zip(stream.events, later, strict=True) if seen]
    mine = [p for p, seen in zip(predicted, later, strict=True) if seen]
    assert within_sampling_error(agreement(events, mine), 0.8, len(events))


def test_hidden_regimes_hide_the_rule_from_the_current_features() -> None:
    stream = hidden_regimes(N, n_keys=30, switch=0.05, noise=0.05, seed=4)
    assert stream.best_accuracy == pytest.approx(0.95)
    sign = [int(e.features["x"] > 0) for e in stream.events]
    assert 0.3 < agreement(stream.events, sign) < 0.7  # either regime: the sign alone is no rule
    # Within a key, the regime persists: the last event's agreement predicts the next one's.
    last: dict[str, bool] = {}
    same = total = 0
    for event, s in zip(stream.events, sign, strict=True):
        agrees = event.label == s
        if event.key in last:
            same += agrees == last[event.key]
            total += 1
        last[event.key] = agrees
    assert same / total > 0.8


def test_drift_turns_the_boundary_over_the_stream() -> None:
    stream = slow_drift(N, turns=0.5, noise=0.0, seed=5)
    assert stream.best_accuracy == 1.0
    head, tail = stream.events[: N // 20], stream.events[-N // 20 :]
    assert agreement(head, [int(e.features["x1"] > 0) for e in head]) > 0.9
    assert agreement(tail, [int(e.features["x1"] > 0) for e in tail]) < 0.1  # half a turn: reversed


def test_seasonal_labels_follow_the_time_of_day() -> None:
    stream = seasonal(N, n_keys=5, weight=0.0, noise=0.0, seed=6)
    predicted = [int(math.sin(2 * math.pi * (e.ts % DAY) / DAY) > 0) for e in stream.events]  # type: ignore[operator]
    assert agreement(stream.events, predicted) == 1.0
    assert stream.events[-1].ts - stream.events[0].ts > 20 * DAY  # type: ignore[operator]


def test_no_signal_is_the_base_rate() -> None:
    stream = no_signal(N, base_rate=0.6, seed=7)
    assert stream.best_accuracy == pytest.approx(0.6)
    assert stream.best_log_loss == pytest.approx(-(0.6 * math.log(0.6) + 0.4 * math.log(0.4)))
    assert within_sampling_error(sum(e.label for e in stream.events) / N, 0.6, N)  # type: ignore[misc]


@settings(max_examples=30, deadline=None)
@given(
    n_events=st.integers(1, 300),
    n_keys=st.integers(1, 20),
    noise=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**32),
)
def test_any_parameters_give_valid_streams(n_events: int, n_keys: int, noise: float, seed: int) -> None:
    for stream in (
        lagged_xor(n_events, n_keys=n_keys, noise=noise, seed=seed),
        hidden_regimes(n_events, n_keys=n_keys, noise=noise, seed=seed),
        slow_drift(n_events, n_keys=n_keys, noise=noise, seed=seed),
        seasonal(n_events, n_keys=n_keys, noise=noise, seed=seed),
        noisy_labels(n_events, n_keys=n_keys, noise=noise, seed=seed),
        no_signal(n_events, n_keys=n_keys, seed=seed),
    ):
        assert len(stream.events) == len(stream.oracle) == n_events
        assert 0.5 <= stream.best_accuracy <= 1.0
        assert len({e.key for e in stream.events}) <= n_keys


@pytest.mark.parametrize("bad", [{"n_events": 0}, {"n_keys": 0}, {"noise": 0.6}, {"noise": -0.1}])
def test_bad_parameters_are_refused(bad: dict[str, float]) -> None:
    options = {"n_events": 10, "n_keys": 2, "noise": 0.1, **bad}
    with pytest.raises(ValueError):
        lagged_xor(int(options.pop("n_events")), **options)  # type: ignore[arg-type]
