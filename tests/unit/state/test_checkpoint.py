"""Saving and loading checkpoints in the data format: a split run equals an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stream_lstm.errors import CheckpointError, CheckpointRejected
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.learner.process import LearnerProcess
from stream_lstm.messages.events import Event
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.state.checkpoint import (
    decode_checkpoint,
    encode_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from stream_lstm.state.codec import MAGIC, SCHEMA
from stream_lstm.state.directory_store import DirectoryStore
from stream_lstm.state.store import InstanceState, PartitionState

LSTM = {"hidden_size": 16, "tbptt_steps": 4, "device": "cpu"}
BATCH = 8


def fresh(max_keys: int = 8) -> PrequentialEvaluator:
    return PrequentialEvaluator(
        build_models(["lstm", "logreg", "no_change"], max_keys=max_keys, lstm=LSTM),
        window=100,
        max_keys=max_keys,
    )


def feed(evaluator: PrequentialEvaluator, events: list[Event]) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {name: [] for name in evaluator.models}
    for start in range(0, len(events), BATCH):
        for name, p in evaluator.process(events[start : start + BATCH]).items():
            out[name].append(p)
    return out


def assert_same_predictions(whole: dict, *parts: dict) -> None:
    for name in whole:
        split = [p for part in parts for p in part[name]]
        np.testing.assert_array_equal(np.concatenate(whole[name]), np.concatenate(split), err_msg=name)


@pytest.mark.parametrize("split", [96, 200])  # on batch boundaries, as the service splits
def test_save_and_load_midstream_gives_identical_predictions(tmp_path: Path, split: int) -> None:
    # More keys than max_keys, so eviction state must survive the round trip too.
    events = list(temporal_stream(400, n_keys=12, seed=9))
    whole = feed(fresh(), events)

    first = fresh()
    part_one = feed(first, events[:split])
    path = tmp_path / "state" / "checkpoint.ckpt"
    save_checkpoint(path, InstanceState(evaluator=first, instance="a"))
    assert path.read_bytes().startswith(MAGIC + SCHEMA.to_bytes(2, "big"))
    del first
    second = load_checkpoint(path).evaluator
    part_two = feed(second, events[split:])

    assert_same_predictions(whole, part_one, part_two)
    reference = fresh()
    feed(reference, events)
    for name, scorer in reference.scores.items():
        for scores in ("whole", "rolling"):
            exact = pytest.approx(getattr(scorer, scores)(), rel=0, abs=0, nan_ok=True)
            assert getattr(second.scores[name], scores)() == exact, (name, scores)
    assert second.models["lstm"].keys.evictions == reference.models["lstm"].keys.evictions > 0


def test_key_states_saved_per_partition_continue_exactly_as_the_service_resumes(tmp_path: Path) -> None:
    """The service's checkpoint: key states exported per partition, the instance saved without
    them; a restart loads the instance, then imports each partition's keys."""
    events = list(temporal_stream(480, n_keys=10, seed=4))
    partition_of = {key: i % 2 for i, key in enumerate(sorted({event.key for event in events}))}
    whole = feed(fresh(max_keys=64), events)

    first = fresh(max_keys=64)
    part_one = feed(first, events[:240])
    store = DirectoryStore(tmp_path)
    for number in (0, 1):
        keys = sorted(key for key, p in partition_of.items() if p == number)
        store.save_partition(
            PartitionState(
                topic="in", partition=number, offset=120, keys=keys, key_state=first.export_keys(keys)
            )
        )
    with first.keys_set_aside():
        store.save_instance(InstanceState(evaluator=first, instance="a"))
    del first

    second = store.load_instance("a").evaluator
    assert not second.models["lstm"].tracked_keys() and not second.models["no_change"].tracked_keys()
    for number in (0, 1):
        second.import_keys(store.load_partition(("in", number)).key_state)
    part_two = feed(second, events[240:])
    assert_same_predictions(whole, part_one, part_two)


def test_an_lstm_in_its_learner_process_is_saved_as_the_learner_itself(tmp_path: Path) -> None:
    """The service's checkpoint of an evaluator whose LSTM runs in a child process: the child
    hands over its learner's data form, which loads as a plain learner and continues exactly."""
    events = list(temporal_stream(240, n_keys=6, seed=2))
    whole = feed(fresh(), events)
    first = fresh()
    # As many torch threads as here: the answers are then equal to the last bit.
    process = LearnerProcess(first.models["lstm"], torch_threads=torch.get_num_threads())
    try:
        first.models["lstm"] = process
        part_one = feed(first, events[:120])
        save_checkpoint(tmp_path / "a.ckpt", InstanceState(evaluator=first, instance="a"))
    finally:
        process.close()
    second = load_checkpoint(tmp_path / "a.ckpt").evaluator
    assert isinstance(second.models["lstm"], LSTMLearner)
    assert_same_predictions(whole, part_one, feed(second, events[120:]))


def test_a_partition_checkpoint_round_trips_field_by_field() -> None:
    evaluator = fresh()
    feed(evaluator, list(temporal_stream(64, n_keys=4, seed=1)))
    keys = sorted(evaluator.models["lstm"].tracked_keys())
    state = PartitionState(
        topic="in",
        partition=3,
        offset=64,
        events=60,
        dead_letters=4,
        keys=keys,
        key_state=evaluator.export_keys(keys),
        instance="a",
        epoch=7,
    )
    loaded = decode_checkpoint(encode_checkpoint(state), "p")
    assert isinstance(loaded, PartitionState)
    assert (loaded.topic, loaded.partition, loaded.offset, loaded.events, loaded.dead_letters) == (
        "in",
        3,
        64,
        60,
        4,
    )
    assert (loaded.keys, loaded.instance, loaded.epoch, loaded.version) == (keys, "a", 7, state.version)
    assert loaded.key_state["no_change"] == state.key_state["no_change"]
    assert loaded.key_state["_reference"] == state.key_state["_reference"]
    for field, value in state.key_state["lstm"].items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(loaded.key_state["lstm"][field], value, err_msg=field)
        else:
            assert loaded.key_state["lstm"][field] == value, field


def test_keys_and_feature_names_that_look_like_the_formats_own_markers_round_trip() -> None:
    """Keys and names are data: one spelled like an array reference stays a key."""
    evaluator = PrequentialEvaluator(build_models(["logreg", "no_change"]), window=10)
    odd = ["$array", "$$array", "$", "", "ключ", "a\x00b"]
    evaluator.process([Event(key=key, features={key: 1.0}, label=i % 2) for i, key in enumerate(odd)])
    loaded = decode_checkpoint(encode_checkpoint(InstanceState(evaluator=evaluator, instance="a")), "i")
    assert list(loaded.evaluator.models["no_change"].last_label) == odd
    assert list(loaded.evaluator.models["logreg"].feature_names) == odd
    partition = PartitionState(
        topic="t", partition=0, offset=6, keys=odd, key_state=evaluator.export_keys(odd)
    )
    assert decode_checkpoint(encode_checkpoint(partition), "p").key_state == partition.key_state


def test_checkpoint_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, PartitionState(topic="t", partition=0, offset=1))
    save_checkpoint(path, PartitionState(topic="t", partition=0, offset=2))
    assert load_checkpoint(path).offset == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]


def test_only_checkpoint_states_are_saved(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot serialise"):
        save_checkpoint(tmp_path / "c.ckpt", {"n": 1})  # type: ignore[arg-type]
    assert not (tmp_path / "c.ckpt").exists()


def test_damaged_foreign_or_other_version_checkpoints_are_refused_with_their_reason(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.ckpt"
    foreign.write_bytes(b"hello")
    with pytest.raises(CheckpointRejected, match="not a stream-lstm checkpoint") as refused:
        load_checkpoint(foreign)
    assert refused.value.reason == "not_a_checkpoint"
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, PartitionState(topic="t", partition=0, offset=1))
    good = path.read_bytes()
    path.write_bytes(good[:-3])
    with pytest.raises(CheckpointRejected, match="damaged") as refused:
        load_checkpoint(path)
    assert refused.value.reason == "damaged"
    path.write_bytes(MAGIC + (SCHEMA + 1).to_bytes(2, "big") + good[len(MAGIC) + 2 :])
    with pytest.raises(
        CheckpointRejected, match=f"format {SCHEMA + 1}; this version .* reads format {SCHEMA}"
    ) as refused:
        load_checkpoint(path)
    assert refused.value.reason == "unknown_version"
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "missing.ckpt")
