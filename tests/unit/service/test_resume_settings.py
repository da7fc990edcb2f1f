"""A resumed checkpoint keeps no setting silently: a different one is refused, or applied.

The service is told its learner settings (``ServiceSettings.learner_settings``). Its own
checkpoint, or another instance's that it warm-starts from, written with other models, sizes,
window, key bound or seed, is refused with every difference listed; a different step size,
gradient clip or device is applied to the loaded learner and logged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from stream_lstm.config.declared import LEARNER_SETTINGS, lstm_arguments
from stream_lstm.errors import CheckpointRejected, ConfigError
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_evaluator
from stream_lstm.evaluation.resume_settings import (
    FIXED,
    RESUME_SAFE,
    current_learner_settings,
    resume_with_settings,
)
from stream_lstm.kafka.interface import KafkaSettings
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.service.ledger import Ledger
from stream_lstm.service.recovery import Recovery
from stream_lstm.service.settings import ServiceSettings
from stream_lstm.state.codec import encode_tree
from stream_lstm.state.state_tree import INSTANCE, state_to_tree
from stream_lstm.state.store import InstanceState
from stream_lstm.testing.memory_store import MemoryStore

DEFAULTS = {setting.name: setting.default for setting in LEARNER_SETTINGS}
SMALL = {**DEFAULTS, "hidden_size": 8, "max_keys": 64, "device": "cpu"}


def learner_settings(**changes: Any) -> dict[str, Any]:
    settings = {**SMALL, **changes}
    return current_learner_settings(settings, lstm_arguments(settings))


def evaluator_of(settings: dict[str, Any]) -> PrequentialEvaluator:
    evaluator = build_evaluator(
        settings["models"],
        window=settings["window"],
        max_keys=settings["max_keys"],
        lstm=lstm_arguments(settings),
    )
    events = list(temporal_stream(64, n_keys=4, seed=1))
    for start in range(0, 64, 16):
        evaluator.process(events[start : start + 16])
    return evaluator


def test_every_learner_setting_is_either_fixed_or_safe_to_change() -> None:
    assert set(FIXED) | set(RESUME_SAFE) == set(DEFAULTS) - {"batch_size"}
    assert not set(FIXED) & set(RESUME_SAFE)


def test_the_same_settings_resume_unchanged() -> None:
    evaluator = evaluator_of(learner_settings())
    saved = evaluator.learner_settings()  # what its checkpoint holds
    assert {name: saved[name] for name in learner_settings()} == learner_settings()
    assert resume_with_settings(evaluator, learner_settings(), "the checkpoint") is evaluator


def test_other_sizes_models_and_window_are_refused_with_every_difference() -> None:
    evaluator = evaluator_of(learner_settings())
    current = learner_settings(hidden_size=4, models=("logreg", "no_change"), window=50, learning_rate=0.1)
    with pytest.raises(ConfigError) as refused:
        resume_with_settings(evaluator, current, "the checkpoint of instance a")
    message = str(refused.value)
    assert "the checkpoint of instance a was written with other settings" in message
    assert "hidden_size: checkpoint 8, now 4" in message
    assert "models: checkpoint lstm,logreg,logreg_lags,no_change,mix, now logreg,no_change" in message
    assert "window: checkpoint 1000, now 50" in message
    assert "learning_rate" not in message  # changeable: not a reason to refuse
    assert "--checkpoint-dir" in message and "checkpoint's settings" in message
    assert evaluator.models["lstm"].learning_rate == 0.01  # nothing was applied


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_keys", 128), ("tbptt_steps", 4), ("max_features", 16), ("input_clip", 5.0), ("seed", 3)],
)
def test_each_fixed_setting_is_refused(name: str, value: Any) -> None:
    evaluator = evaluator_of(learner_settings())
    with pytest.raises(ConfigError, match=f"{name}: checkpoint {SMALL[name]}, now {value}"):
        resume_with_settings(evaluator, learner_settings(**{name: value}), "the checkpoint")


def test_the_step_size_and_the_gradient_clip_are_applied_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    evaluator = evaluator_of(learner_settings())
    caplog.set_level(logging.INFO, logger="stream_lstm.evaluation.resume_settings")
    now = learner_settings(learning_rate=0.1, clip_grad_norm=0.5, lr_boost_half_life=7.0)
    resume_with_settings(evaluator, now, "the checkpoint")
    lstm = evaluator.models["lstm"]
    assert (lstm.learning_rate, lstm.optimizer.lr, lstm.clip_grad_norm) == (0.1, 0.1, 0.5)
    assert lstm.lr_boost_half_life == lstm.optimizer.boost_half_life == 7.0
    assert "lr_boost_half_life was 100.0 in the checkpoint, now 7.0" in caplog.text
    assert lstm.hyperparameters()["learning_rate"] == 0.1
    assert "learning_rate was 0.01 in the checkpoint, now 0.1" in caplog.text
    assert "clip_grad_norm was 1.0 in the checkpoint, now 0.5" in caplog.text
    # Learning goes on with the new step size, and the next checkpoint holds it.
    assert lstm.events_learned < lstm.extra_step_events  # the next batch takes the early extra step
    steps = lstm.steps + lstm.steps_per_batch + 1
    evaluator.process(list(temporal_stream(16, n_keys=4, seed=2)))
    assert lstm.steps == steps
    assert evaluator.learner_settings()["learning_rate"] == 0.1


def test_a_new_device_rebuilds_the_learner_there_with_its_weights() -> None:
    evaluator = evaluator_of(learner_settings(device="auto"))
    lstm = evaluator.models["lstm"]
    before = {name: value.clone() for name, value in lstm.network.state_dict().items()}
    resume_with_settings(evaluator, learner_settings(device="cpu"), "the checkpoint")
    assert lstm.device == "cpu" and lstm.torch_device.type == "cpu"
    for name, value in lstm.network.state_dict().items():
        assert (value == before[name]).all(), name


def test_without_an_lstm_only_its_shared_settings_are_compared() -> None:
    settings = learner_settings(models=("logreg", "no_change"))
    evaluator = evaluator_of(settings)
    # The LSTM's sizes do not matter to a checkpoint without one...
    resume_with_settings(evaluator, {**settings, "hidden_size": 4, "learning_rate": 0.5}, "the checkpoint")
    # ...but the feature bound the logistic regression shares with it does.
    with pytest.raises(ConfigError, match="max_features: checkpoint 32, now 8"):
        resume_with_settings(evaluator, {**settings, "max_features": 8}, "the checkpoint")


def recovery(store: MemoryStore, tmp_path: Path, current: dict[str, Any] | None) -> Recovery:
    settings = ServiceSettings(
        kafka=KafkaSettings("localhost:1", "in", "out", "dead", "group"),
        checkpoint_dir=tmp_path,
        instance_id="b",
        learner_settings=current,
    )
    return Recovery(store, settings, Ledger(), lambda: evaluator_of(learner_settings()))


def test_the_service_refuses_its_own_and_another_instances_checkpoint_of_other_settings(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    store.save_instance(InstanceState(evaluator=evaluator_of(learner_settings()), instance="a"))
    changed = learner_settings(hidden_size=4)
    # A warm start from instance a's weights follows the same rules.
    with pytest.raises(
        ConfigError,
        match=r"instance a, to warm-start from, in memory store .*hidden_size: checkpoint 8, now 4",
    ):
        recovery(store, tmp_path, changed).load_evaluator()
    store.save_instance(InstanceState(evaluator=evaluator_of(learner_settings()), instance="b"))
    with pytest.raises(ConfigError, match=r"checkpoint of instance b in memory store .*hidden_size"):
        recovery(store, tmp_path, changed).load_evaluator()
    # Without settings to compare (a caller that does not give them) it resumes as saved.
    assert recovery(store, tmp_path, None).load_evaluator().models["lstm"].hidden_size == 8


def test_the_service_applies_a_new_step_size_to_its_own_checkpoint(tmp_path: Path) -> None:
    store = MemoryStore()
    store.save_instance(InstanceState(evaluator=evaluator_of(learner_settings()), instance="b"))
    resumed = recovery(store, tmp_path, learner_settings(learning_rate=0.1)).load_evaluator()
    assert resumed.models["lstm"].learning_rate == resumed.models["lstm"].optimizer.lr == 0.1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_a_checkpoint_of_a_device_this_host_lacks_resumes_on_the_services_device(tmp_path: Path) -> None:
    """Written on a GPU host, resumed on one without: restored on --device, not refused."""
    tree = state_to_tree(InstanceState(evaluator=evaluator_of(learner_settings()), instance="b"))
    lstm = next(entry["state"] for entry in tree["evaluator"]["models"] if entry["name"] == "lstm")
    lstm["hyperparameters"]["device"] = "cuda"
    store = MemoryStore()
    store._instances["b"] = [encode_tree(tree, INSTANCE)]
    with pytest.raises(CheckpointRejected, match="sees no CUDA GPU"):
        recovery(store, tmp_path, None).load_placed_evaluator()
    resumed = recovery(store, tmp_path, learner_settings(device="cpu")).load_placed_evaluator()
    assert resumed.models["lstm"].device == "cpu" and resumed.models["lstm"].torch_device.type == "cpu"
    # Asked for the device it lacks, the service refuses, as a fresh start would.
    with pytest.raises(CheckpointRejected, match="sees no CUDA GPU"):
        recovery(store, tmp_path, learner_settings(device="cuda")).load_placed_evaluator()
