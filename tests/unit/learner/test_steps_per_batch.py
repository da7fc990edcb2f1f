"""Several optimizer steps per micro-batch: prequential, deterministic, guarded and kept in checkpoints."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from stream_lstm.config.setting import steps_per_batch as steps_per_batch_setting
from stream_lstm.errors import ConfigError
from stream_lstm.evaluation.resume_settings import RESUME_SAFE
from stream_lstm.learner.limits import MAX_STEPS_PER_BATCH
from stream_lstm.learner.lstm_learner import CHANGEABLE_SETTINGS, LSTMLearner
from stream_lstm.messages.events import Event
from stream_lstm.offline.evaluate import batches
from stream_lstm.offline.generator import temporal_stream
from tests.unit.learner.test_learner_guards import POISONS, REAL_LOSS, assert_finite_state
from tests.unit.learner.test_lstm_reference import PathCounter, learn_side_by_side


def learner(steps: int, **options: object) -> LSTMLearner:
    # Without the early boost and the early extra step, as learn_side_by_side's learners (see there).
    options = {"lr_boost_half_life": 0, "extra_step_events": 0, **options}
    return LSTMLearner(hidden_size=8, tbptt_steps=4, device="cpu", steps_per_batch=steps, **options)  # type: ignore[arg-type]


def stream(n_events: int = 400, n_keys: int = 5, seed: int = 3) -> list[list[Event]]:
    return list(batches(temporal_stream(n_events, n_keys=n_keys, seed=seed), 16))


def learn(model: LSTMLearner, chunks: list[list[Event]]) -> np.ndarray:
    predictions = []
    for chunk in chunks:
        predictions.append(model.predict_batch(chunk))
        model.learn_batch(chunk)
    return np.concatenate(predictions)


def weights(model: LSTMLearner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.network.parameters()]


@pytest.mark.parametrize("full_window_path", [True, False])
def test_each_batch_takes_its_steps_and_counts_its_events_once(full_window_path: bool) -> None:
    chunks = stream()
    one, three = learner(1), learner(3)
    three._full_window_path = one._full_window_path = full_window_path
    learn(one, chunks)
    learn(three, chunks)
    assert one.steps == len(chunks) and three.steps == 3 * len(chunks)
    assert three.events_learned == one.events_learned == sum(map(len, chunks))
    assert three.events_seen == one.events_seen
    assert any(not torch.equal(a, b) for a, b in zip(weights(one), weights(three), strict=True))


def test_more_steps_learn_more_from_each_event() -> None:
    """On a stream the LSTM learns, the loss over the same events falls faster with more steps.

    At a learning rate where one step per batch is what holds learning back (0.003: the whole
    stream's log loss is 0.59 with 1 step, 0.49 with 4, with torch on 1 or 2 threads); at 0.01 the
    two are within 0.005, and which is lower depends on the thread count's rounding."""
    chunks = stream(3000, n_keys=20, seed=8)
    labels = np.array([e.label for chunk in chunks for e in chunk])
    losses = {}
    for steps in (1, 4):
        p = np.clip(learn(learner(steps, learning_rate=0.003), chunks), 1e-7, 1 - 1e-7)
        losses[steps] = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))
    assert losses[4] < losses[1] - 0.05, losses


@pytest.mark.parametrize("steps", [2, 3])
def test_a_prediction_does_not_depend_on_its_own_label_or_later_ones(steps: int) -> None:
    """Within a batch a later event of a key sees the labels before it (its previous label is an
    input), so the labels are flipped from mid-batch on: nothing up to there may change."""
    events = [e for chunk in stream() for e in chunk]
    t = 12 * 16 + 7
    flipped = events[:t] + [dataclasses.replace(e, label=1 - e.label) for e in events[t:]]
    before = learn(learner(steps), list(batches(events, 16)))
    after = learn(learner(steps), list(batches(flipped, 16)))
    np.testing.assert_array_equal(before[: t + 1], after[: t + 1])
    assert not np.array_equal(before[t + 1 :], after[t + 1 :])  # the flipped labels were learned


def test_the_steps_are_deterministic_so_a_replayed_batch_is_learned_exactly_once_alike() -> None:
    chunks = stream()
    first, second = learner(3), learner(3)
    np.testing.assert_array_equal(learn(first, chunks), learn(second, chunks))
    for mine, theirs in zip(weights(first), weights(second), strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize(("batch_size", "n_keys"), [(64, 40), (16, 30)])
def test_steady_state_and_general_paths_agree_with_several_steps(batch_size: int, n_keys: int) -> None:
    events = list(temporal_stream(1500, n_keys=n_keys, seed=5))
    fast, general = learner(2), learner(2)
    general._full_window_path = False
    paths = PathCounter(fast)
    learn_side_by_side(fast, general, events, batch_size, atol=1e-5)
    assert paths.steady_with_repeats >= 3


def test_a_checkpoint_keeps_the_steps_and_resumes_exactly() -> None:
    chunks = stream()
    original = learner(3)
    learn(original, chunks[:10])
    copy = LSTMLearner.from_state(original.to_state(), "learner")
    assert copy.steps_per_batch == 3 and copy.hyperparameters() == original.hyperparameters()
    np.testing.assert_array_equal(learn(original, chunks[10:]), learn(copy, chunks[10:]))
    for mine, theirs in zip(weights(original), weights(copy), strict=True):
        assert torch.equal(mine, theirs)


def test_a_checkpoint_from_before_the_setting_takes_one_step() -> None:
    state = learner(1).to_state()
    del state["hyperparameters"]["steps_per_batch"]
    assert LSTMLearner.from_state(state, "learner").steps_per_batch == 1


def test_the_steps_may_change_on_resume() -> None:
    assert "steps_per_batch" in CHANGEABLE_SETTINGS and "steps_per_batch" in RESUME_SAFE
    model = learner(1)
    model.change_settings({"steps_per_batch": 4})
    chunks = stream()
    learn(model, chunks[:2])
    assert model.steps == 8


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, MAX_STEPS_PER_BATCH + 1])
def test_steps_per_batch_is_a_whole_number_within_the_bound(bad: object) -> None:
    with pytest.raises(ConfigError, match="steps_per_batch"):
        learner(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="steps_per_batch"):
        learner(1).change_settings({"steps_per_batch": bad})


def test_the_setting_the_learner_and_its_checkpoint_share_one_bound() -> None:
    assert steps_per_batch_setting(str(MAX_STEPS_PER_BATCH)) == MAX_STEPS_PER_BATCH
    with pytest.raises(ValueError, match="at most"):
        steps_per_batch_setting(str(MAX_STEPS_PER_BATCH + 1))
    most = learner(MAX_STEPS_PER_BATCH)
    assert LSTMLearner.from_state(most.to_state(), "learner").steps_per_batch == MAX_STEPS_PER_BATCH


@pytest.mark.parametrize("check_on_host", [True, False])
@pytest.mark.parametrize("reason", sorted(POISONS))
def test_a_skipped_step_ends_the_batchs_steps(
    reason: str, check_on_host: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the host the steps stop; on the device (its path run here on the CPU) the later steps
    are neither taken nor counted: the counts and the weights agree."""
    chunks = stream()
    model = learner(3)
    model._check_on_host = check_on_host
    learn(model, chunks[:5])
    steps = model.steps
    with monkeypatch.context() as patch:
        patch.setattr(torch, "binary_cross_entropy_with_logits", POISONS[reason])
        learn(model, chunks[5:7])
    assert model.steps == steps and model.guard_stats()[f"skipped_{reason}"] == 2  # one per batch
    assert_finite_state(model)


@pytest.mark.parametrize("reason", sorted(POISONS))
def test_a_later_step_skipped_ends_the_batchs_steps_alike_on_host_and_device(
    reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second of three steps of each batch is poisoned: the first is taken, the second
    skipped and counted, the third neither taken nor counted, on either path."""
    chunks = stream()
    results = []
    for check_on_host in (True, False):
        model = learner(3)
        model._check_on_host = check_on_host
        learn(model, chunks[:5])
        steps = model.steps
        calls = itertools.count()
        poison = POISONS[reason]

        def second_step_poisoned(*args: object, poison=poison, calls=calls) -> torch.Tensor:
            call = next(calls)
            return poison(*args) if call % 3 == 1 else REAL_LOSS(*args)

        with monkeypatch.context() as patch:
            patch.setattr(torch, "binary_cross_entropy_with_logits", second_step_poisoned)
            # On the host the third step never runs, so its loss is not called: count per batch.
            for chunk in chunks[5:7]:
                model.predict_batch(chunk)
                model.learn_batch(chunk)
                if check_on_host:
                    next(calls)
        assert model.steps == steps + 2 and model.guard_stats()[f"skipped_{reason}"] == 2
        assert_finite_state(model)
        results.append(weights(model))
    for on_host, on_device in zip(*results, strict=True):
        torch.testing.assert_close(on_host, on_device)
