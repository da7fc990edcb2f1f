"""Prequential semantics: a prediction uses only the past, and unlabelled events are not learned."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_evaluator, build_models
from stream_lstm.learner.limits import DEFAULT_BASE_RATE_ODDS
from stream_lstm.messages.events import Event
from stream_lstm.offline.generator import temporal_stream

SMALL_LSTM = {"hidden_size": 8, "tbptt_steps": 4, "device": "cpu", "learning_rate": 0.05}


def run(
    events: list[Event],
    batch_size: int,
    steps_per_batch: int = 1,
    extra_step_events: int = 0,
    base_rate_odds: float = DEFAULT_BASE_RATE_ODDS,
) -> dict[str, np.ndarray]:
    lstm = {
        **SMALL_LSTM,
        "steps_per_batch": steps_per_batch,
        "extra_step_events": extra_step_events,
        "base_rate_odds": base_rate_odds,
    }
    evaluator = build_evaluator(["lstm", "logreg", "logreg_lags", "no_change", "mix"], lstm=lstm, window=50)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in evaluator.names}
    for start in range(0, len(events), batch_size):
        for name, p in evaluator.process(events[start : start + batch_size]).items():
            parts[name].append(p)
    return {name: np.concatenate(p) for name, p in parts.items()}


@pytest.mark.parametrize(
    ("batch_size", "steps_per_batch", "extra_step_events", "base_rate_odds"),
    # The early extra step on the batches up to event 200, t among them; prior odds of 1 nat give
    # the base rate a weight of about a quarter in the LSTM's predictions from the start.
    [
        (1, 1, 0, 10.0),
        (7, 1, 0, 10.0),
        (32, 1, 0, 10.0),
        (7, 3, 0, 10.0),
        (32, 3, 0, 10.0),
        (7, 1, 200, 10.0),
        (32, 2, 200, 10.0),
        (1, 1, 0, 1.0),
        (32, 2, 200, 1.0),
    ],
)
def test_changing_label_of_t_or_later_leaves_prediction_of_t_unchanged(
    batch_size: int, steps_per_batch: int, extra_step_events: int, base_rate_odds: float
) -> None:
    events = list(temporal_stream(300, n_keys=4, seed=5))
    t = 150  # mid-batch for every batch size above
    altered = events[:t] + [dataclasses.replace(e, label=1 - e.label) for e in events[t:]]
    before = run(events, batch_size, steps_per_batch, extra_step_events, base_rate_odds)
    after = run(altered, batch_size, steps_per_batch, extra_step_events, base_rate_odds)
    for name in before:
        np.testing.assert_array_equal(before[name][: t + 1], after[name][: t + 1], err_msg=name)
        # ...and the flipped labels do change later predictions, so the comparison has teeth.
        assert not np.array_equal(before[name][t + 1 :], after[name][t + 1 :]), name


@pytest.mark.parametrize(("steps_per_batch", "extra_step_events"), [(1, 0), (3, 0), (2, 150)])
def test_changing_features_of_later_events_leaves_earlier_predictions_unchanged(
    steps_per_batch: int, extra_step_events: int
) -> None:
    events = list(temporal_stream(200, n_keys=3, seed=6))
    t = 100
    altered = events[: t + 1] + [
        dataclasses.replace(e, features={"a": 10.0, "z": -3.0}) for e in events[t + 1 :]
    ]
    before = run(events, 16, steps_per_batch, extra_step_events)
    after = run(altered, 16, steps_per_batch, extra_step_events)
    for name in before:
        np.testing.assert_array_equal(before[name][: t + 1], after[name][: t + 1], err_msg=name)


def test_unlabelled_events_are_predicted_but_not_learned() -> None:
    evaluator = PrequentialEvaluator(build_models(["lstm", "logreg", "no_change"], lstm=SMALL_LSTM))
    labelled = list(temporal_stream(64, n_keys=2, seed=1))
    evaluator.process(labelled)
    lstm = evaluator.models["lstm"]
    weights = [p.detach().clone() for p in lstm.network.parameters()]
    unlabelled = [dataclasses.replace(e, label=None) for e in temporal_stream(64, n_keys=2, seed=2)]
    predictions = evaluator.process(unlabelled)
    assert all(p.shape == (64,) and np.isfinite(p).all() for p in predictions.values())
    steps = lstm.steps_per_batch + 1  # one batch, at the stream's start: the early extra step
    assert lstm.events_learned == 64 and lstm.events_seen == 128 and lstm.steps == steps
    for before, after in zip(weights, lstm.network.parameters(), strict=True):
        assert np.array_equal(before.numpy(), after.detach().numpy())
    assert evaluator.scores["lstm"].count == 64  # unlabelled events are not scored either
    assert evaluator.events == 128 and evaluator.labelled == 64


def test_previous_label_of_the_same_key_is_an_input() -> None:
    """Within one batch, a later event of a key sees the label of its earlier event."""
    evaluator = PrequentialEvaluator(build_models(["no_change"]))
    batch = [Event(key="a", label=1), Event(key="b", label=0), Event(key="a", label=0)]
    assert evaluator.process(batch)["no_change"].tolist() == [0.5, 0.5, 1.0]
