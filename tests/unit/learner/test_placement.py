"""Learners built only to be handed to another process keep their tensors on the CPU.

The device setting is kept and still checked, so the process that unpickles the learner puts it
where it was asked to be. A GPU stands in here as torch's ``meta`` device, which every machine has
(tests/unit/test_cuda_learner.py checks the same on a real GPU).
"""

from __future__ import annotations

import pickle

import pytest
import torch

from stream_lstm.errors import ConfigError
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.learner.placement import learners_kept_on_cpu, learners_on_cpu
from stream_lstm.messages.events import Event

BATCH = [Event(key="a", features={"x": 1.0}, label=1), Event(key="b", features={"x": -1.0}, label=0)]


def test_a_learner_built_under_learners_on_cpu_holds_cpu_tensors_and_keeps_its_device_setting() -> None:
    with learners_on_cpu():
        learner = LSTMLearner(hidden_size=4, device="meta")
        learner.predict_batch(BATCH)  # it runs: the tensors hold values
        learner.learn_batch(BATCH)
        saved = pickle.dumps(learner)
        reloaded_here = pickle.loads(saved)
    tensors = [*learner.network.parameters(), learner.keys.h0, learner.keys.c0, learner.keys.window]
    assert {t.device.type for t in tensors} == {"cpu"}
    assert learner.hyperparameters()["device"] == "meta"
    assert reloaded_here.torch_device.type == "cpu"
    # Unpickled elsewhere (the learner process), it goes where its setting says.
    there = pickle.loads(saved)
    assert there.torch_device.type == "meta"
    assert {p.device.type for p in there.network.parameters()} == {"meta"}
    # One batch: its steps, and the extra one of a stream's start.
    assert there.steps == there.steps_per_batch + 1 and there.tracked_keys() == {"a", "b"}


def test_a_learner_kept_on_the_cpu_still_refuses_a_device_it_cannot_have() -> None:
    with learners_on_cpu(), pytest.raises(ConfigError, match="unknown device"):
        LSTMLearner(device="no-such-device")
    if not torch.cuda.is_available():
        with learners_on_cpu(), pytest.raises(ConfigError, match="no CUDA GPU"):
            LSTMLearner(device="cuda")


def test_learners_on_cpu_ends_with_its_block_and_nests() -> None:
    assert not learners_kept_on_cpu()
    with learners_on_cpu(False):
        assert not learners_kept_on_cpu()
    with learners_on_cpu():
        with learners_on_cpu(False):  # an inner False does not undo an outer True
            assert learners_kept_on_cpu()
        assert learners_kept_on_cpu()
    assert not learners_kept_on_cpu()
    assert LSTMLearner(hidden_size=4, device="meta").torch_device.type == "meta"
