"""Checkpoints name the module of every pickled class: those written before a class moved still load."""

from __future__ import annotations

import pickle
from pathlib import Path

from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.models.build import build_models
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.state.checkpoint import FORMAT_VERSION, MAGIC, decode_checkpoint
from stream_lstm.state.directory_store import DirectoryStore
from stream_lstm.state.store import InstanceState, PartitionState

#: Where a class was pickled from before it moved, and where it lives now.
MOVED = {
    b"stream_lstm.state.directory_store\nInstanceState": b"stream_lstm.state.store\nInstanceState",
    b"stream_lstm.state.directory_store\nPartitionState": b"stream_lstm.state.store\nPartitionState",
    b"stream_lstm.evaluation.prequential\nScorer": b"stream_lstm.evaluation.scores\nScorer",
}


def as_written_before_the_move(state: object) -> bytes:
    """A checkpoint of ``state`` that names the classes' former modules (protocol 0 spells each
    class as ``module\\nname``, so that the names can be swapped)."""
    payload = pickle.dumps(state, protocol=0)
    for old, new in MOVED.items():
        assert new in payload
        payload = payload.replace(new, old)
    return MAGIC + FORMAT_VERSION.to_bytes(2, "big") + payload


def trained_evaluator() -> PrequentialEvaluator:
    evaluator = PrequentialEvaluator(build_models(["logreg", "no_change"], max_keys=16), window=20)
    events = list(temporal_stream(64, n_keys=4, seed=3))
    for start in range(0, len(events), 16):
        evaluator.process(events[start : start + 16])
    return evaluator


def test_instance_and_partition_states_of_the_former_modules_load(tmp_path: Path) -> None:
    evaluator = trained_evaluator()
    state = {
        "instance": InstanceState(evaluator=evaluator, instance="a"),
        "partition": PartitionState(topic="in", partition=0, offset=64, events=64, key_state={"k": 1}),
    }
    loaded = decode_checkpoint(as_written_before_the_move(state), "old.ckpt")
    assert isinstance(loaded["instance"], InstanceState) and isinstance(loaded["partition"], PartitionState)
    assert loaded["partition"] == state["partition"]
    assert loaded["instance"].evaluator.report() == evaluator.report()
    # A store reads them back as it writes them.
    store = DirectoryStore(tmp_path)
    store.save_instance(loaded["instance"])
    assert store.load_instance("a").evaluator.scores["logreg"].whole() == evaluator.scores["logreg"].whole()


def test_an_evaluator_pickled_with_the_retired_report_only_attributes_loads_without_them() -> None:
    """Versions that merged another evaluator's results into one kept two more attributes."""
    evaluator = trained_evaluator()
    evaluator.__dict__.update(_report_only=False, _added_guard_stats={})
    loaded = pickle.loads(pickle.dumps(evaluator))
    assert "_report_only" not in vars(loaded) and "_added_guard_stats" not in vars(loaded)
    assert loaded.report() == evaluator.report()
    assert set(vars(pickle.loads(pickle.dumps(loaded)))) == set(vars(loaded))
