"""Per-partition key state moving between learners, and the directory checkpoint store."""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stream_lstm.errors import ConfigError
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.state.directory_store import DirectoryStore, InstanceState, PartitionState, check_instance_id


def make_evaluator() -> PrequentialEvaluator:
    return PrequentialEvaluator(
        build_models(
            ["lstm", "logreg", "no_change"], lstm={"hidden_size": 8, "tbptt_steps": 4, "device": "cpu"}
        )
    )


def run(evaluator: PrequentialEvaluator, events, batch: int = 16) -> dict[str, list[float]]:
    predictions: dict[str, list[float]] = {name: [] for name in evaluator.models}
    for start in range(0, len(events), batch):
        for name, p in evaluator.process(events[start : start + batch]).items():
            predictions[name].extend(p.tolist())
    return predictions


def test_exported_keys_continue_exactly_in_a_learner_with_the_same_weights() -> None:
    events = list(temporal_stream(600, n_keys=6, seed=4))
    first, rest = events[:300], events[300:]
    moved = {"k0", "k1", "k2"}
    later = [e for e in rest if e.key in moved]

    original = make_evaluator()
    run(original, first)
    # The new owner has the same weights but none of the keys (like a fresh instance warm-started
    # from the same weights), then imports the moved keys' state.
    with original.keys_set_aside():
        receiver = pickle.loads(pickle.dumps(original))
    assert len(receiver.models["lstm"].keys) == 0
    receiver.import_keys(original.export_keys(sorted(moved)))
    assert set(receiver.models["lstm"].keys.keys()) == moved

    expected = run(original, later)
    got = run(receiver, later)
    for name in ("lstm", "no_change"):
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=name)


def test_forgotten_keys_restart_from_zero_state() -> None:
    events = list(temporal_stream(200, n_keys=4, seed=1))
    evaluator = make_evaluator()
    run(evaluator, events)
    lstm = evaluator.models["lstm"]
    evaluator.forget_keys(["k0", "k1"])
    assert "k0" not in lstm.keys and "k2" in lstm.keys
    assert evaluator.held_keys(["k0", "k1", "k2"]) == {"k2"}
    assert lstm.keys.evictions == 0  # forgetting is not evicting
    assert evaluator.export_keys(["k0"])["lstm"]["keys"] == []


def test_import_refuses_key_states_of_another_shape() -> None:
    evaluator = make_evaluator()
    run(evaluator, list(temporal_stream(50, n_keys=2, seed=1)))
    other = PrequentialEvaluator(build_models(["lstm"], lstm={"hidden_size": 4, "device": "cpu"}))
    with pytest.raises(ConfigError, match="other sizes"):
        other.import_keys(evaluator.export_keys(["k0"]))


def test_store_round_trips_partitions_and_instances(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    assert store.load_partition(("events", 3)) is None and store.load_instance("a") is None
    state = PartitionState(topic="events", partition=3, offset=42, events=40, dead_letters=2, keys=["k"])
    store.save_partition(state)
    assert store.load_partition(("events", 3)) == state
    assert store.partitions() == [("events", 3)]
    evaluator = make_evaluator()
    run(evaluator, list(temporal_stream(64, n_keys=2, seed=1)))
    store.save_instance(InstanceState(evaluator=evaluator, instance="a"))
    assert store.load_instance("a").evaluator.events == 64
    assert store.newest_other_instance("a") is None
    assert store.newest_other_instance("b").instance == "a"  # what a new instance warm-starts from


def test_an_instance_id_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from stream_lstm.state.directory_store import DirectoryStore; "
            f"store = DirectoryStore({str(tmp_path)!r}); store.lock_instance('a'); "
            "print('locked', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        store = DirectoryStore(tmp_path)
        with pytest.raises(ConfigError, match="in use by another running instance"):
            store.lock_instance("a")
        store.lock_instance("b")  # another id is free
    finally:
        holder.communicate("", timeout=10)
    store.lock_instance("a")  # free again once the holder is gone (also after a SIGKILL)


@pytest.mark.parametrize("bad", ["", "a/b", "..", "x" * 201, "é"])
def test_instance_ids_must_be_safe_file_names(bad: str) -> None:
    with pytest.raises(ConfigError):
        check_instance_id(bad)


def test_import_refuses_windows_of_another_feature_layout_and_adopts_new_features() -> None:
    from stream_lstm.messages.events import Event

    def learner_after(names: list[str]) -> PrequentialEvaluator:
        evaluator = PrequentialEvaluator(build_models(["lstm"], lstm={"hidden_size": 4, "device": "cpu"}))
        evaluator.process([Event(key="k", features={name: 1.0 for name in names}, label=1)])
        return evaluator

    exporter = learner_after(["a", "b"])
    state = exporter.export_keys(["k"])
    with pytest.raises(ConfigError, match="another feature layout"):
        learner_after(["b", "a"]).import_keys(state)  # "a" is column 1 there, column 0 here
    receiver = PrequentialEvaluator(build_models(["lstm"], lstm={"hidden_size": 4, "device": "cpu"}))
    receiver.import_keys(state)  # a fresh learner takes the exporter's layout
    assert receiver.models["lstm"].feature_columns == {"a": 0, "b": 1}


def test_importing_into_a_full_store_evicts_the_least_recently_used_keys() -> None:
    def small() -> PrequentialEvaluator:
        return PrequentialEvaluator(
            build_models(["lstm"], max_keys=6, lstm={"hidden_size": 4, "device": "cpu"})
        )

    source = small()
    run(source, list(temporal_stream(200, n_keys=3, seed=2)))
    receiver = small()
    run(receiver, [replace(e, key="r" + e.key) for e in temporal_stream(200, n_keys=6, seed=3)])
    receiver.forget_keys(["rk5"])
    receiver.import_keys(source.export_keys(["k0", "k1", "k2"]))
    store = receiver.models["lstm"].keys
    assert len(store) == 6 and store.evictions == 2  # 5 kept + 3 imported: the 2 oldest went
    assert {"k0", "k1", "k2"} <= set(store.keys())
    mine, theirs = store, source.models["lstm"].keys
    np.testing.assert_array_equal(
        mine.h0[mine.lookup(["k1"])].numpy(), theirs.h0[theirs.lookup(["k1"])].numpy()
    )


def test_export_lists_the_asked_keys_least_recently_used_first_whatever_the_order_asked() -> None:
    from stream_lstm.learner.key_state import KeyStateStore

    store = KeyStateStore(max_keys=10, hidden_size=2, window_steps=1, input_size=1, device="cpu")
    store.lookup(["a", "b", "c", "d"])
    store.lookup(["b", "e"])  # b is now newer than c and d; e is new
    store.lookup(["a"])
    lru = store.keys()
    assert lru == ["c", "d", "b", "e", "a"]
    exported = store.export(["a", "e", "c", "zz", "b", "a"])
    assert exported["keys"] == ["c", "b", "e", "a"]  # untracked and repeated keys left out
    restored = KeyStateStore(max_keys=10, hidden_size=2, window_steps=1, input_size=1, device="cpu")
    restored.load_state_dict(store.state_dict())
    assert restored.export(["a", "d", "c"])["keys"] == ["c", "d", "a"]  # the order survives a save
