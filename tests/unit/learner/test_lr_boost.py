"""The step size's early boost: it follows Adam's step count, survives checkpoints, may change on
resume, and its setting, learner and checkpoint share one bound."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

from stream_lstm.config.declared import RUN_SETTINGS
from stream_lstm.config.setting import add_settings, resolve_settings
from stream_lstm.config.setting import lr_boost_half_life as lr_boost_setting
from stream_lstm.errors import CheckpointRejected, ConfigError
from stream_lstm.evaluation.resume_settings import RESUME_SAFE
from stream_lstm.learner.limits import DEFAULT_LR_BOOST_HALF_LIFE, MAX_LR_BOOST_HALF_LIFE
from stream_lstm.learner.lstm_learner import CHANGEABLE_SETTINGS, LSTMLearner
from stream_lstm.messages.events import Event
from stream_lstm.offline.evaluate import batches
from stream_lstm.offline.generator import temporal_stream
from tests.unit.learner.test_steps_per_batch import learn


def learner(**options: object) -> LSTMLearner:
    return LSTMLearner(hidden_size=8, tbptt_steps=4, device="cpu", **options)  # type: ignore[arg-type]


def stream(n_events: int = 480, seed: int = 4) -> list[list[Event]]:
    return list(batches(temporal_stream(n_events, n_keys=3, seed=seed), 32))


def test_the_boost_is_on_by_default_and_changes_what_is_learned() -> None:
    assert learner().lr_boost_half_life == DEFAULT_LR_BOOST_HALF_LIFE > 0
    chunks = stream()
    boosted, plain = learner(), learner(lr_boost_half_life=0)
    with_boost, without = learn(boosted, chunks), learn(plain, chunks)
    assert np.array_equal(with_boost[: len(chunks[0])], without[: len(chunks[0])])  # same start
    assert not np.allclose(with_boost, without)
    assert boosted.optimizer.lr == plain.optimizer.lr == boosted.learning_rate  # the base is kept


def test_each_step_takes_twice_the_rate_fading_with_adams_step_count() -> None:
    model = learner(lr_boost_half_life=4, steps_per_batch=2, extra_step_events=0)
    taken: list[float] = []
    step_size = model.optimizer._step_size

    def recording() -> float | torch.Tensor:
        size = step_size()
        taken.append(float(size))
        return size

    model.optimizer._step_size = recording  # type: ignore[method-assign]
    learn(model, stream()[:5])
    rate = model.learning_rate
    assert taken == pytest.approx([rate * (1 + 2 ** (-step / 4)) for step in range(10)])


def resumed_after_four_batches(**options: object) -> tuple[LSTMLearner, LSTMLearner, LSTMLearner]:
    """Learners of ``options`` on :func:`stream`: one saved after 4 batches and loaded, which then
    learns the rest, one that learns it all without a save, and the one saved (checked: the loaded
    one predicts the rest exactly as the one never saved)."""
    chunks = stream()
    whole, first = learner(**options), learner(**options)
    expected = learn(whole, chunks)
    learn(first, chunks[:4])
    resumed = LSTMLearner.from_state(first.to_state(), "learner")
    got = learn(resumed, chunks[4:])
    np.testing.assert_array_equal(got, expected[sum(len(c) for c in chunks[:4]) :])
    return resumed, whole, first


def test_a_resumed_learner_goes_on_with_the_boost_where_it_was() -> None:
    resumed_after_four_batches(lr_boost_half_life=3)


def test_a_checkpoint_from_before_the_boost_resumes_without_it() -> None:
    state = learner().to_state()
    del state["hyperparameters"]["lr_boost_half_life"]
    assert LSTMLearner.from_state(state, "learner").lr_boost_half_life == 0


@pytest.mark.parametrize(
    "bad", [-1, 0.5, 1e-300, math.inf, math.nan, MAX_LR_BOOST_HALF_LIFE * 2, True, "100"]
)
def test_a_checkpoint_with_a_boost_out_of_bounds_is_refused(bad: object) -> None:
    assert_checkpoint_refuses("lr_boost_half_life", bad)


def assert_checkpoint_refuses(name: str, bad: object) -> None:
    """A checkpoint whose hyperparameter ``name`` is ``bad`` is refused, and the refusal names it."""
    state = learner().to_state()
    state["hyperparameters"][name] = bad
    with pytest.raises(CheckpointRejected, match=name):
        LSTMLearner.from_state(state, "learner")


def turned_off_on_resume(name: str, on: object) -> LSTMLearner:
    """A learner built with ``name`` at ``on`` and changed to 0 as a resume changes it; checks
    that ``name`` may change on resume and that the changed learner learns exactly as one built
    with 0."""
    assert name in CHANGEABLE_SETTINGS and name in RESUME_SAFE
    chunks = stream()
    changed, plain = learner(**{name: on}), learner(**{name: 0})
    changed.change_settings({name: 0})
    np.testing.assert_array_equal(learn(changed, chunks), learn(plain, chunks))
    return changed


def test_the_boost_may_change_on_resume_and_0_turns_it_off() -> None:
    changed = turned_off_on_resume("lr_boost_half_life", 50)
    with pytest.raises(ConfigError, match="lr_boost_half_life"):
        changed.change_settings({"lr_boost_half_life": -2})
    assert changed.lr_boost_half_life == 0


def test_a_refused_change_of_settings_changes_nothing() -> None:
    model = learner(lr_boost_half_life=50, learning_rate=0.02)
    for refused in (
        {"learning_rate": 0.5, "lr_boost_half_life": -1},
        {"lr_boost_half_life": 10, "learning_rate": math.nan},
        {"lr_boost_half_life": 10, "clip_grad_norm": 0},
        {"learning_rate": 0.5, "steps_per_batch": 0},
    ):
        with pytest.raises(ConfigError):
            model.change_settings(refused)
        assert (model.learning_rate, model.optimizer.lr) == (0.02, 0.02)
        assert model.lr_boost_half_life == model.optimizer.boost_half_life == 50


def test_the_smallest_boost_stays_finite_when_worked_out_the_devices_way() -> None:
    """On a GPU the step size is float32 arithmetic on the device; the smallest half-life allowed
    (1 step) must not make it 0/0 there."""
    chunks = stream()
    model = learner(lr_boost_half_life=1)
    model.optimizer.step_size_on_host = False
    predictions = learn(model, chunks)
    assert np.isfinite(predictions).all() and model.guard_stats()["skipped_non_finite_loss"] == 0
    assert all(torch.isfinite(p).all() for p in model.network.parameters())


@pytest.mark.parametrize(
    "bad", [-1, -0.5, 0.5, 1e-300, math.inf, math.nan, MAX_LR_BOOST_HALF_LIFE * 2, True, "100"]
)
def test_the_learner_refuses_a_boost_out_of_bounds(bad: object) -> None:
    with pytest.raises(ConfigError, match="lr_boost_half_life"):
        learner(lr_boost_half_life=bad)


def test_the_setting_the_learner_and_its_checkpoint_share_one_bound() -> None:
    assert [lr_boost_setting(text) for text in ("0", "1", "2.5", "100", "1e9")] == [0, 1, 2.5, 100, 1e9]
    for text in ("-1", "0.5", "1e-300", "2e9", "nan", "inf", "many"):
        with pytest.raises(ValueError):
            lr_boost_setting(text)
    assert learner(lr_boost_half_life=MAX_LR_BOOST_HALF_LIFE).lr_boost_half_life == MAX_LR_BOOST_HALF_LIFE
    with pytest.raises(ConfigError, match=r"^STREAM_LSTM_LR_BOOST_HALF_LIFE=2e9: lr_boost_half_life must be"):
        resolve_settings(run_args(), RUN_SETTINGS, environ={"STREAM_LSTM_LR_BOOST_HALF_LIFE": "2e9"})
    assert resolve_settings(run_args(), RUN_SETTINGS, environ={})["lr_boost_half_life"] == 100


def run_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--config")
    add_settings(parser, RUN_SETTINGS)
    return parser.parse_args([])
