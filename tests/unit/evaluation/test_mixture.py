"""The ``mix`` model: fixed-share weights that sum to one, follow a changing best model, and never
move on a label before its event is predicted."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_lstm.errors import CheckpointRejected, ConfigError
from stream_lstm.evaluation.mixture import BASE_RATE, MIXTURE, FixedShareMixture
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_evaluator
from stream_lstm.evaluation.scores import log_loss_terms
from stream_lstm.messages.events import Event
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.state.codec import decode_tree, encode_tree

ANY_PROBABILITY = st.one_of(
    st.floats(min_value=0.0, max_value=1.0), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0])
)


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.tuples(st.integers(0, 1), ANY_PROBABILITY, ANY_PROBABILITY), max_size=20), max_size=8
    ),
    share=st.sampled_from([0.0, 1e-3, 0.5]),
)
def test_weights_sum_to_one_and_predictions_are_probabilities(
    batches: list[list[tuple[int, float, float]]], share: float
) -> None:
    mixture = FixedShareMixture(["a", "b"], share=share)
    for batch in batches:
        labels = np.array([label for label, _, _ in batch], dtype=np.int8)
        experts = {"a": np.array([a for _, a, _ in batch]), "b": np.array([b for _, _, b in batch])}
        prediction = mixture.predict(experts)
        assert prediction.shape == labels.shape
        assert ((prediction > 0) & (prediction < 1)).all()
        mixture.learn(labels, experts)
        assert np.isfinite(mixture.weights).all() and (mixture.weights >= 0).all()
        assert math.isclose(float(mixture.weights.sum()), 1.0)
        assert list(mixture.weights_by_expert()) == ["a", "b", BASE_RATE]


def _run(events: list[Event], batch_size: int, names: list[str]) -> tuple[PrequentialEvaluator, np.ndarray]:
    evaluator = build_evaluator(names, window=50)
    parts = [
        evaluator.process(events[start : start + batch_size])[MIXTURE]
        for start in range(0, len(events), batch_size)
    ]
    return evaluator, np.concatenate(parts)


@pytest.mark.parametrize("batch_size", [1, 16])
def test_a_mixed_prediction_uses_only_the_losses_of_earlier_batches(batch_size: int) -> None:
    events = list(temporal_stream(400, n_keys=4, seed=3))
    t = 200  # mid-batch at size 16: weights learned from its batch would move the batch's predictions
    altered = events[:t] + [dataclasses.replace(e, label=1 - e.label) for e in events[t:]]
    (_, before), (_, after) = (
        _run(stream, batch_size, ["logreg", "no_change", MIXTURE]) for stream in (events, altered)
    )
    np.testing.assert_array_equal(before[: t + 1], after[: t + 1])
    assert not np.array_equal(before[t + 1 :], after[t + 1 :])


def test_save_and_load_keep_the_mixture() -> None:
    events = list(temporal_stream(600, n_keys=5, seed=4))
    evaluator, _ = _run(events[:400], 20, ["logreg", "no_change", MIXTURE])
    _, tree = decode_tree(encode_tree(evaluator.to_state(), "evaluator"), "test", ["evaluator"])
    loaded = PrequentialEvaluator.from_state(tree, "evaluator")
    assert loaded.mixture is not None and evaluator.mixture is not None
    np.testing.assert_array_equal(loaded.mixture.weights, evaluator.mixture.weights)
    assert loaded.scores[MIXTURE].whole() == evaluator.scores[MIXTURE].whole()
    for start in range(400, 600, 20):
        batch = events[start : start + 20]
        np.testing.assert_array_equal(loaded.process(batch)[MIXTURE], evaluator.process(batch)[MIXTURE])


def test_a_checkpoint_without_a_mixture_still_loads() -> None:
    evaluator, _ = _run(list(temporal_stream(100, n_keys=2, seed=1)), 10, ["no_change", MIXTURE])
    state = evaluator.to_state()
    del state["mixture"]
    for table in ("scores", "seconds", "trace"):
        del state[table][MIXTURE]
    loaded = PrequentialEvaluator.from_state(state, "evaluator")
    assert loaded.mixture is None and loaded.names == ["no_change"]


def test_a_mixture_of_other_experts_than_the_models_is_refused() -> None:
    evaluator, _ = _run(list(temporal_stream(100, n_keys=2, seed=1)), 10, ["logreg", "no_change", MIXTURE])
    state = evaluator.to_state()
    state["mixture"]["experts"] = ["no_change", "logreg"]
    with pytest.raises(CheckpointRejected, match="experts"):
        PrequentialEvaluator.from_state(state, "evaluator")
    state["mixture"]["experts"] = ["logreg", "no_change"]
    state["mixture"]["weights"] = np.array([0.5, 0.5, 0.5])
    with pytest.raises(CheckpointRejected, match="sum"):
        PrequentialEvaluator.from_state(state, "evaluator")


def _swapping_experts(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels, and two experts: "first" is right (0.9 on the label) for the first half, "second"
    for the second half; each says 0.1 on the label where the other is right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int8)
    sure = np.where(labels == 1, 0.9, 0.1)
    first_half = np.arange(n) < n // 2
    return labels, {
        "first": np.where(first_half, sure, 1 - sure),
        "second": np.where(first_half, 1 - sure, sure),
    }


def _mixed_loss(
    mixture: FixedShareMixture, labels: np.ndarray, experts: dict[str, np.ndarray], batch: int
) -> float:
    total = 0.0
    for start in range(0, labels.size, batch):
        part = slice(start, start + batch)
        chunk = {name: p[part] for name, p in experts.items()}
        total += float(log_loss_terms(labels[part], mixture.predict(chunk)).sum())
        mixture.learn(labels[part], chunk)
    return total


def test_fixed_share_recovers_when_the_best_model_changes() -> None:
    labels, experts = _swapping_experts(6000, seed=0)
    best_sequence = float(log_loss_terms(labels, np.where(labels == 1, 0.9, 0.1)).sum())  # 0.105 per event
    shared = _mixed_loss(FixedShareMixture(["first", "second"]), labels, experts, batch=16)
    plain = _mixed_loss(FixedShareMixture(["first", "second"], share=0.0), labels, experts, batch=16)
    # Fixed share pays ln(3) at the start, about ln(1/share) and a batch of misses at the swap, and
    # the share on every event: well under 0.02 per event beyond the best sequence of experts.
    assert shared < best_sequence + 0.02 * labels.size
    # Without share the weight of "second" is ~exp(-2.2 * 3000) at the swap: "first" loses ~2.2 per
    # event until the base rate takes over (~1,000 events), then the base rate loses ~0.6 per event.
    assert plain > best_sequence + 0.3 * labels.size
    mixture = FixedShareMixture(["first", "second"])
    _mixed_loss(mixture, labels, experts, batch=16)
    assert mixture.weights_by_expert()["second"] > 0.98  # the rest is the share: 2 x 0.016 / 3


def test_on_a_stream_without_signal_the_mixture_is_as_good_as_the_base_rate() -> None:
    """The documented margin (docs/evaluation.md): 0.01 in log loss over the whole stream."""
    rng = random.Random(7)
    events = [
        Event(
            key=f"k{rng.randrange(50)}",
            features={"a": rng.gauss(0, 1), "b": rng.gauss(0, 1)},
            label=int(rng.random() < 0.3),
        )
        for _ in range(20_000)
    ]
    evaluator = build_evaluator(["logreg", "no_change", MIXTURE], window=1000)
    for start in range(0, len(events), 64):
        evaluator.process(events[start : start + 64])
    rate = sum(e.label for e in events) / len(events)
    base_rate = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    mixed = evaluator.scores[MIXTURE].whole()["log_loss"]
    assert mixed <= base_rate + 0.01, (mixed, base_rate)


def test_the_mixture_needs_a_model_to_mix() -> None:
    with pytest.raises(ConfigError, match="mixes other models"):
        build_evaluator([MIXTURE])
    with pytest.raises(ConfigError, match="distinct"):
        FixedShareMixture(["a", "a"])
