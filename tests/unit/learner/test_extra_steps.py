"""The early extra step: batches that start within a stream's first ``extra_step_events`` labelled
events get one optimizer step more; its clock survives checkpoints, it may change on resume, and
its setting, learner and checkpoint share one bound."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_lstm.config.declared import RUN_SETTINGS
from stream_lstm.config.setting import extra_step_events as extra_step_setting
from stream_lstm.config.setting import resolve_settings
from stream_lstm.errors import ConfigError
from stream_lstm.learner.limits import DEFAULT_EXTRA_STEP_EVENTS, MAX_EXTRA_STEP_EVENTS
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.messages.events import Event
from tests.unit.learner.test_lr_boost import (
    assert_checkpoint_refuses,
    learner,
    resumed_after_four_batches,
    run_args,
    stream,
    turned_off_on_resume,
)
from tests.unit.learner.test_steps_per_batch import learn


def steps_per_learned_batch(model: LSTMLearner, chunks: list[list[Event]]) -> list[int]:
    """The optimizer steps each batch of ``chunks`` took, learned in order on ``model``."""
    taken = []
    for chunk in chunks:
        before = model.steps
        model.predict_batch(chunk)
        model.learn_batch(chunk)
        taken.append(model.steps - before)
    return taken


def test_batches_that_start_within_the_first_events_get_one_more_step() -> None:
    assert learner().extra_step_events == DEFAULT_EXTRA_STEP_EVENTS > 0
    # Batches of 32 labelled events: those starting at 0, 32 and 64 start before event 70.
    taken = steps_per_learned_batch(learner(steps_per_batch=2, extra_step_events=70), stream()[:6])
    assert taken == [3, 3, 3, 2, 2, 2]
    assert steps_per_learned_batch(learner(steps_per_batch=1, extra_step_events=0), stream()[:3]) == [1, 1, 1]


def test_unlabelled_events_do_not_move_its_clock() -> None:
    unlabelled = [Event(key="a", features={"x": float(i)}) for i in range(40)]
    labelled = [Event(key="a", features={"x": 1.0}, label=1)] * 4
    model = learner(steps_per_batch=1, extra_step_events=4)
    assert steps_per_learned_batch(model, [unlabelled, labelled, labelled]) == [0, 2, 1]
    assert model.events_learned == 8


def test_it_changes_what_is_learned_from_the_second_step_on() -> None:
    chunks = stream()
    extra, plain = learner(extra_step_events=64), learner(extra_step_events=0)
    with_extra, without = learn(extra, chunks), learn(plain, chunks)
    assert np.array_equal(with_extra[: len(chunks[0])], without[: len(chunks[0])])  # same start
    assert not np.allclose(with_extra, without)
    assert extra.steps == plain.steps + 2


def test_a_resumed_learner_goes_on_with_the_extra_step_where_it_was() -> None:
    resumed, whole, saved = resumed_after_four_batches(extra_step_events=200)
    assert saved.events_learned == 128  # saved within the 200 events with an extra step
    assert resumed.extra_step_events == 200 and resumed.steps == whole.steps


def test_a_checkpoint_from_before_the_extra_step_resumes_without_it() -> None:
    state = learner().to_state()
    del state["hyperparameters"]["extra_step_events"]
    assert LSTMLearner.from_state(state, "learner").extra_step_events == 0


@pytest.mark.parametrize("bad", [-1, 0.5, 100.0, math.inf, math.nan, MAX_EXTRA_STEP_EVENTS + 1, True, "100"])
def test_a_checkpoint_with_extra_step_events_out_of_bounds_is_refused(bad: object) -> None:
    assert_checkpoint_refuses("extra_step_events", bad)


def test_it_may_change_on_resume_and_0_turns_it_off() -> None:
    changed = turned_off_on_resume("extra_step_events", 5000)
    with pytest.raises(ConfigError, match="extra_step_events"):
        changed.change_settings({"extra_step_events": -2})
    with pytest.raises(ConfigError, match="extra_step_events"):
        changed.change_settings({"learning_rate": 0.5, "extra_step_events": 1.5})
    assert changed.extra_step_events == 0 and changed.learning_rate == 0.01


@pytest.mark.parametrize("bad", [-1, 0.5, 100.0, math.inf, math.nan, MAX_EXTRA_STEP_EVENTS + 1, True, "100"])
def test_the_learner_refuses_extra_step_events_out_of_bounds(bad: object) -> None:
    with pytest.raises(ConfigError, match="extra_step_events"):
        learner(extra_step_events=bad)


def test_the_setting_the_learner_and_its_checkpoint_share_one_bound() -> None:
    assert [extra_step_setting(text) for text in ("0", "1", "5000", str(MAX_EXTRA_STEP_EVENTS))] == [
        0,
        1,
        5000,
        MAX_EXTRA_STEP_EVENTS,
    ]
    for text in ("-1", "0.5", "1e3", str(MAX_EXTRA_STEP_EVENTS + 1), "nan", "many"):
        with pytest.raises(ValueError):
            extra_step_setting(text)
    top = learner(extra_step_events=MAX_EXTRA_STEP_EVENTS)
    assert LSTMLearner.from_state(top.to_state(), "learner").extra_step_events == MAX_EXTRA_STEP_EVENTS
    too_many = str(MAX_EXTRA_STEP_EVENTS + 1)
    with pytest.raises(ConfigError, match=rf"^STREAM_LSTM_EXTRA_STEP_EVENTS={too_many}: extra_step_events"):
        resolve_settings(run_args(), RUN_SETTINGS, environ={"STREAM_LSTM_EXTRA_STEP_EVENTS": too_many})
    assert resolve_settings(run_args(), RUN_SETTINGS, environ={})["extra_step_events"] == 5000
