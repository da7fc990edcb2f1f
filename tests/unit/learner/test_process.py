"""The LSTM in a process of its own: same answers as in this process, state moves, failures."""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.learner.process import LearnerProcess, LearnerProcessError
from stream_lstm.offline.evaluate import batches
from stream_lstm.offline.generator import temporal_stream

SIZES = {"hidden_size": 8, "device": "cpu", "seed": 3}


@pytest.fixture
def process():
    # As many torch threads as here: the answers are then equal to the last bit.
    learner_process = LearnerProcess(LSTMLearner(**SIZES), torch_threads=torch.get_num_threads())
    yield learner_process
    learner_process.close()


def stream(n: int = 480, seed: int = 5) -> list[list]:
    return list(batches(temporal_stream(n, n_keys=6, seed=seed), 32))


def weights(learner: LSTMLearner) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in learner.network.state_dict().items()}


def test_predictions_and_weights_equal_the_learner_run_here_even_one_batch_ahead(process) -> None:
    here = PrequentialEvaluator({"lstm": LSTMLearner(**SIZES)})
    there = PrequentialEvaluator({"lstm": process})
    chunks = stream()
    expected = []
    for chunk in chunks:
        steps_before_last = here.models["lstm"].steps
        expected.append(here.process(chunk)["lstm"])
    got = []
    # As the service does under load: send batch k before publishing and learning batch k-1.
    assert there.send_ahead(chunks[0])
    for previous, chunk in itertools.pairwise(chunks):
        there.send_ahead(chunk)
        got.append(there.predict(previous)["lstm"])
        there.learn(previous, {"lstm": got[-1]})
        assert process.in_flight == 1
    got.append(there.process(chunks[-1])["lstm"])
    assert process.in_flight == 0
    for expected_batch, got_batch in zip(expected, got, strict=True):
        np.testing.assert_array_equal(got_batch, expected_batch)
    # As of the last batch's prediction: before that batch's steps.
    assert process.steps == steps_before_last
    assert there.scores["lstm"].whole() == here.scores["lstm"].whole()
    assert there.seconds["lstm"] > 0
    # Pickled, the process is the learner itself, with the same weights and state.
    saved = pickle.loads(pickle.dumps(there))
    copy = saved.models["lstm"]
    assert isinstance(copy, LSTMLearner)
    mine = weights(here.models["lstm"])
    for name, value in weights(copy).items():
        assert torch.equal(value, mine[name]), name
    assert copy.steps == here.models["lstm"].steps
    assert copy.events_learned == here.models["lstm"].events_learned


def test_load_replaces_the_learner_and_drops_what_was_in_flight(process) -> None:
    chunks = stream()
    checkpoint = pickle.dumps(process)  # a fresh learner
    reference = pickle.loads(checkpoint)
    process.start_predict(chunks[0])
    process.start_predict(chunks[1])
    process.load(pickle.loads(checkpoint))  # a rollback
    assert process.in_flight == 0
    np.testing.assert_array_equal(process.predict_batch(chunks[0]), reference.predict_batch(chunks[0]))
    process.learn_batch(chunks[0])
    reference.learn_batch(chunks[0])
    assert process.key_stats() == reference.key_stats()


def test_key_states_move_out_and_back_in(process) -> None:
    chunks = stream()
    for chunk in chunks[:4]:
        process.predict_batch(chunk)
        process.learn_batch(chunk)
    keys = sorted(process.tracked_keys())
    assert keys and process.key_stats() == {"tracked": len(keys), "evicted": 0}
    exported = process.export_keys(keys[:2])
    # Plain arrays, the data form of a checkpoint (no tensor in shared memory, either).
    assert all(isinstance(exported[name], np.ndarray) for name in ("h0", "c0", "window"))
    process.forget_keys(keys[:2])
    assert sorted(process.tracked_keys()) == keys[2:]
    process.import_keys(exported)
    assert sorted(process.tracked_keys()) == keys
    token = process.detach_keys()
    assert not process.tracked_keys()
    light = pickle.loads(pickle.dumps(process))  # the weights without key states
    assert not light.tracked_keys()
    process.attach_keys(token)
    assert sorted(process.tracked_keys()) == keys
    stats = process.training_stats()
    assert np.isfinite(stats["loss"]) and np.isfinite(stats["grad_norm"])
    assert 0.0 < stats["network_weight"] <= 1.0
    assert process.device_memory_bytes() == 0
    assert process.hyperparameters()["hidden_size"] == 8
    assert process.torch_device == "cpu"


def test_calls_out_of_order_are_refused(process) -> None:
    first, second, third = stream()[:3]
    with pytest.raises(RuntimeError, match="finish_predict without"):
        process.finish_predict(first)
    process.start_predict(first)
    with pytest.raises(RuntimeError, match="in flight"):
        process.export_keys(["k0"])  # the child is ahead of the caller
    process.start_predict(second)
    with pytest.raises(RuntimeError, match="at most 2"):
        process.start_predict(third)
    with pytest.raises(RuntimeError, match="oldest batch"):
        process.learn_batch(first)  # not collected yet
    with pytest.raises(RuntimeError, match="in the order they were sent"):
        process.finish_predict(second)
    process.finish_predict(first)
    with pytest.raises(RuntimeError, match="oldest batch"):
        process.learn_batch(second)
    process.learn_batch(first)
    process.finish_predict(second)
    process.learn_batch(second)
    assert process.in_flight == 0
    assert process.training_stats()  # still working after the refusals


def test_a_failure_in_the_child_is_reported_with_its_cause_and_is_final(process) -> None:
    chunk = stream()[0]
    process.predict_batch(chunk)
    process.learn_batch(chunk)
    columns = process.export_keys([])["feature_columns"]
    swapped = {"a": columns["b"], "b": columns["a"]}  # unreadable windows for this learner
    with pytest.raises(LearnerProcessError, match="ConfigError: key states were saved with another"):
        process.import_keys({"feature_columns": swapped})
    with pytest.raises(LearnerProcessError, match="ConfigError"):
        process.predict_batch(chunk)  # its learner may be half-updated: nothing more
    with pytest.raises(LearnerProcessError):
        pickle.dumps(process)


def test_a_stop_sent_to_the_process_group_is_left_to_the_parent(process) -> None:
    # systemd, `kill -- -PGID` or Ctrl-C signal every process of the group: the child must live
    # on until the parent has written its last checkpoint and closes it.
    os.kill(process.pid, signal.SIGTERM)
    os.kill(process.pid, signal.SIGINT)
    chunk = stream()[0]
    assert process.predict_batch(chunk).shape == (len(chunk),)
    process.learn_batch(chunk)
    process.close()
    assert not _alive(process.pid)


def test_a_dead_child_is_reported(process) -> None:
    os.kill(process.pid, signal.SIGKILL)
    with pytest.raises(LearnerProcessError, match="exited"):
        process.predict_batch(stream()[0])


def test_a_hung_child_is_given_up_after_the_answer_timeout() -> None:
    hung = LearnerProcess(LSTMLearner(**SIZES), answer_timeout_s=2.0)
    try:
        os.kill(hung.pid, signal.SIGSTOP)  # alive, but it answers nothing
        started = time.monotonic()
        with pytest.raises(LearnerProcessError, match="did not answer within 2 s"):
            hung.predict_batch(stream()[0])
        assert time.monotonic() - started < 30
        with pytest.raises(LearnerProcessError, match="did not answer"):
            hung.predict_batch(stream()[0])  # final: no second wait
    finally:
        hung.close(timeout_s=1.0)
    assert not _alive(hung.pid)


def test_the_child_exits_when_its_parent_is_killed(tmp_path) -> None:
    script = (
        "import sys, time\n"
        "from stream_lstm.learner.lstm_learner import LSTMLearner\n"
        "from stream_lstm.learner.process import LearnerProcess\n"
        "if __name__ == '__main__':\n"
        "    process = LearnerProcess(LSTMLearner(hidden_size=4, device='cpu'))\n"
        "    print(process.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    path = tmp_path / "parent.py"
    path.write_text(script)
    parent = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 20
        while _alive(child):
            assert time.monotonic() < deadline, "the learner process outlived its parent"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait(10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
