"""A checkpoint never holds a non-finite weight, optimizer average, scaler statistic or key state:
both stores refuse to write one (nothing is written) and refuse to load one (a clear error that
names the file or the topic record and what was not finite)."""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from stream_lstm.errors import CheckpointError
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.messages.events import Event
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.state.checkpoint import save_checkpoint
from stream_lstm.state.directory_store import DirectoryStore, InstanceState, PartitionState
from stream_lstm.state.finite_check import non_finite_parts
from stream_lstm.state.topic_screen import RecordScreen
from stream_lstm.state.topic_store import KafkaTopicStore


def trained_evaluator() -> PrequentialEvaluator:
    evaluator = PrequentialEvaluator(
        build_models(
            ["lstm", "logreg", "no_change"], lstm={"hidden_size": 4, "tbptt_steps": 3, "device": "cpu"}
        )
    )
    events = list(temporal_stream(96, n_keys=4, seed=2))
    for start in range(0, len(events), 16):
        evaluator.process(events[start : start + 16])
    return evaluator


def nan_weight(evaluator: PrequentialEvaluator) -> None:
    with torch.no_grad():
        evaluator.models["lstm"].network.lstm.weight_hh_l0[0, 0] = math.nan


def inf_adam_moment(evaluator: PrequentialEvaluator) -> None:
    evaluator.models["lstm"].optimizer.exp_avg_sqs[1][0] = math.inf


def nan_scaler_mean(evaluator: PrequentialEvaluator) -> None:
    lstm = evaluator.models["lstm"]
    lstm.scaler.mean = lstm.scaler.mean.copy()
    lstm.scaler.mean[0] = math.nan


def nan_logreg_weight(evaluator: PrequentialEvaluator) -> None:
    evaluator.models["logreg"].classifier._weights["a"] = math.nan


def inf_logreg_intercept(evaluator: PrequentialEvaluator) -> None:
    evaluator.models["logreg"].classifier.intercept = -math.inf


def nan_logreg_variance(evaluator: PrequentialEvaluator) -> None:
    evaluator.models["logreg"].scaler.vars["b"] = math.nan


POISONS: dict[str, tuple[Callable[[PrequentialEvaluator], None], str]] = {
    "lstm weight": (nan_weight, "model lstm: weight lstm.weight_hh_l0 (1 of 64 values not finite)"),
    "adam moment": (inf_adam_moment, "model lstm: optimizer exp_avg_sq of parameter 1"),
    "lstm scaler": (nan_scaler_mean, "model lstm: scaler mean (1 of "),
    "logreg weight": (nan_logreg_weight, "model logreg: weights of features 'a' (1 of "),
    "logreg intercept": (inf_logreg_intercept, "model logreg: intercept"),
    "logreg variance": (nan_logreg_variance, "model logreg: scaler variances of features 'b'"),
}


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_an_instance_checkpoint_with_a_non_finite_number_is_neither_written_nor_loaded(
    poison: str, tmp_path: Path
) -> None:
    store = DirectoryStore(tmp_path)
    evaluator = trained_evaluator()
    store.save_instance(InstanceState(evaluator=evaluator, instance="good"))
    assert non_finite_parts(InstanceState(evaluator=evaluator, instance="good")) == []
    path = tmp_path / "instances" / "bad.ckpt"
    poison_it, what = POISONS[poison]
    poison_it(evaluator)
    state = InstanceState(evaluator=evaluator, instance="bad")
    with pytest.raises(CheckpointError) as refused:
        store.save_instance(state)
    assert str(path) in str(refused.value) and "not written" in str(refused.value)
    assert what in str(refused.value)
    assert not path.exists() and list(path.parent.iterdir()) == [tmp_path / "instances" / "good.ckpt"]
    # Written by going around the check (as an older version could): refused when read back.
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError) as refused:
        store.load_instance("bad")
    assert str(path) in str(refused.value) and "refused" in str(refused.value)
    assert what in str(refused.value)
    # A new instance warm-starting from the newest checkpoint skips the poisoned one.
    assert store.newest_other_instance("new").instance == "good"


def test_a_failed_save_leaves_the_previous_checkpoint_in_place(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    evaluator = trained_evaluator()
    store.save_instance(InstanceState(evaluator=evaluator, instance="a"))
    before = (tmp_path / "instances" / "a.ckpt").read_bytes()
    nan_weight(evaluator)
    with pytest.raises(CheckpointError):
        store.save_instance(InstanceState(evaluator=evaluator, instance="a"))
    assert (tmp_path / "instances" / "a.ckpt").read_bytes() == before
    loaded = store.load_instance("a").evaluator.models["lstm"]
    assert torch.isfinite(loaded.network.lstm.weight_hh_l0).all()


def partition_state(evaluator: PrequentialEvaluator) -> PartitionState:
    keys = sorted(evaluator.models["lstm"].tracked_keys())
    return PartitionState(
        topic="in", partition=0, offset=96, keys=keys, key_state=evaluator.export_keys(keys)
    )


@pytest.mark.parametrize("field", ["h0", "c0", "window", "last_ts"])
def test_a_partition_checkpoint_with_a_non_finite_key_state_is_neither_written_nor_loaded(
    field: str, tmp_path: Path
) -> None:
    store = DirectoryStore(tmp_path)
    state = partition_state(trained_evaluator())
    exported = state.key_state["lstm"]
    value = exported[field]
    # NaN is what last_ts holds for "no timestamp": only an infinite one is wrong.
    bad = math.inf if field == "last_ts" else math.nan
    value.reshape(-1)[1 if value.ndim == 1 else 5] = bad  # one number, in place
    path = tmp_path / "partitions" / "in" / "0.ckpt"
    with pytest.raises(CheckpointError, match=rf"key state lstm\.{field} \(1 of") as refused:
        store.save_partition(state)
    assert str(path) in str(refused.value) and not path.exists()
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match=rf"key state lstm\.{field}") as refused:
        store.load_partition(("in", 0))
    assert str(path) in str(refused.value)


def test_a_nan_last_ts_means_no_timestamp_and_is_accepted(tmp_path: Path) -> None:
    evaluator = PrequentialEvaluator(build_models(["lstm"], lstm={"hidden_size": 4, "device": "cpu"}))
    evaluator.process([Event(key="a", features={"x": 1.0}, label=1), Event(key="b", ts=5.0, label=0)])
    state = PartitionState(
        topic="in", partition=1, offset=2, keys=["a", "b"], key_state=evaluator.export_keys(["a", "b"])
    )
    last_ts = state.key_state["lstm"]["last_ts"]
    assert math.isnan(last_ts[0]) and last_ts[1] == 5.0
    store = DirectoryStore(tmp_path)
    store.save_partition(state)
    loaded = store.load_partition(("in", 1))
    assert loaded is not None and math.isnan(loaded.key_state["lstm"]["last_ts"][0])
    # And a learner whose keys never had a timestamp saves its instance checkpoint too.
    store.save_instance(InstanceState(evaluator=evaluator, instance="i"))
    assert store.load_instance("i") is not None


def test_the_no_change_export_is_not_mistaken_for_tensors() -> None:
    """The no-change model exports key -> label: keys named like the LSTM's fields are labels."""
    state = PartitionState(
        topic="in", partition=0, offset=1, key_state={"no_change": {"h0": 1, "window": 0, "last_ts": 1}}
    )
    assert non_finite_parts(state) == []


def test_an_instance_checkpoint_of_a_learner_run_in_another_process_is_checked_there(tmp_path: Path) -> None:
    from stream_lstm.learner.process import LearnerProcess

    learner = LSTMLearner(hidden_size=4, device="cpu")
    with torch.no_grad():
        learner.network.head.bias[0] = math.inf
    process = LearnerProcess(learner)
    try:
        evaluator = PrequentialEvaluator({"lstm": process})
        with pytest.raises(
            CheckpointError, match=r"model lstm: weight head\.bias \(1 of 1 values not finite\)"
        ):
            DirectoryStore(tmp_path).save_instance(InstanceState(evaluator=evaluator, instance="p"))
        assert not (tmp_path / "instances" / "p.ckpt").exists()
        # What it saves is the learner itself: loaded back, it is checked as one.
        save_checkpoint(tmp_path / "instances" / "p.ckpt", InstanceState(evaluator=evaluator, instance="p"))
        with pytest.raises(CheckpointError, match=r"p\.ckpt refused: .*weight head\.bias"):
            DirectoryStore(tmp_path).load_instance("p")
    finally:
        process.close()


# ---------------------------------------------------------------------- the topic store


class _Log:
    """Records what the store sends, and acknowledges it at once."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []

    def send(self, records: list[tuple[bytes, bytes | None]], timeout_s: float) -> None:
        self.records.extend(records)


def topic_store_without_a_broker() -> tuple[KafkaTopicStore, _Log]:
    """A topic store whose writes go to a list and whose loads answer from its view (``latest=False``,
    which never asks the broker): its encode and decode paths, with no broker at all."""
    store = KafkaTopicStore.__new__(KafkaTopicStore)
    producer = _Log()
    attributes: dict[str, Any] = {
        "bootstrap_servers": "nowhere:9092",
        "topic": "ckpt",
        "chunk_bytes": 4096,
        "timeout_s": 1.0,
        "root": None,
        "_latest": {},
        "_own_chunks": {},
        "orphan_grace_s": 3600.0,
        "_chunk_written_at": {},
        "_next_orphan_sweep": 0.0,
        "_log": producer,
        "_overtaken": set(),
        "_ignored_manifests": {},
        "_screen": RecordScreen("Kafka topic ckpt on nowhere:9092"),
    }
    store.__dict__.update(attributes)
    return store, producer


def test_the_topic_store_refuses_to_send_or_load_a_non_finite_state(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store, producer = topic_store_without_a_broker()
    evaluator = trained_evaluator()
    store.save_instance(InstanceState(evaluator=evaluator, instance="a"))
    assert store.load_instance("a", latest=False).evaluator.events == 96
    sent = len(producer.records)
    nan_logreg_weight(evaluator)
    where = "instances/a in Kafka topic ckpt on nowhere:9092"
    with pytest.raises(CheckpointError, match="model logreg: weights of features 'a'") as refused:
        store.save_instance(InstanceState(evaluator=evaluator, instance="a"))
    assert f"checkpoint {where} not written" in str(refused.value)
    assert len(producer.records) == sent  # not a chunk, not a manifest
    assert store.load_instance("a", latest=False).evaluator.models["logreg"].non_finite_parts() == []
    # Written by going around the check: skipped when read back (the version before it is gone:
    # its writer replaced it), with a warning naming the record.
    with monkeypatch.context() as patch:
        patch.setattr("stream_lstm.state.topic_store.check_finite", lambda *args, **kwargs: None)
        store.save_instance(InstanceState(evaluator=evaluator, instance="a"))
    with caplog.at_level(logging.WARNING, logger="stream_lstm.state.topic_screen"):
        assert store.load_instance("a", latest=False) is None
    assert f"skipping checkpoint record {where} (damaged)" in caplog.text
    assert f"checkpoint {where} refused" in caplog.text
    assert "model logreg: weights of features 'a'" in caplog.text
    # Partition records likewise.
    state = partition_state(trained_evaluator())
    state.key_state["lstm"]["h0"][0, 0] = math.nan
    with pytest.raises(CheckpointError, match=r"partitions/in/0 in Kafka topic ckpt.*key state lstm\.h0"):
        store.save_partition(state)
    assert store.load_partition(("in", 0), latest=False) is None


def test_a_state_that_pickles_as_a_learner_is_checked_as_one() -> None:
    """What the stores check on load is the object unpickled: the learner, whoever saved it."""
    learner = LSTMLearner(hidden_size=4, device="cpu")
    with torch.no_grad():
        learner.network.lstm.bias_ih_l0[3] = -math.inf
    copy = pickle.loads(pickle.dumps(learner))
    assert copy.non_finite_parts() == ["weight lstm.bias_ih_l0 (1 of 16 values not finite)"]
