"""``stream-lstm convert-checkpoint``: a trusted checkpoint of the old pickle format, converted once.

The old checkpoints here are written as stream-lstm 0.3 pickled them (:mod:`tests.old_checkpoints`),
with classes under the modules they had then, and convert to checkpoints that continue exactly.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from stream_lstm.cli.main import main
from stream_lstm.errors import CheckpointRejected
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.state.checkpoint import load_checkpoint
from stream_lstm.state.directory_store import DirectoryStore
from stream_lstm.state.store import InstanceState, PartitionState
from tests.old_checkpoints import assert_payload_runs, code_running_checkpoints, old_checkpoint, old_payload

LSTM = {"hidden_size": 8, "tbptt_steps": 4, "device": "cpu"}
EVENTS = list(temporal_stream(240, n_keys=6, seed=5))


def trained(names: list[str] = ["lstm", "logreg", "no_change"]) -> PrequentialEvaluator:  # noqa: B006
    evaluator = PrequentialEvaluator(build_models(names, max_keys=16, lstm=LSTM), window=50, max_keys=16)
    for start in range(0, 120, 8):
        evaluator.process(EVENTS[start : start + 8])
    return evaluator


def predictions(evaluator: PrequentialEvaluator) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {name: [] for name in evaluator.models}
    for start in range(120, 240, 8):
        for name, values in evaluator.process(EVENTS[start : start + 8]).items():
            out[name].append(values)
    return {name: np.concatenate(values) for name, values in out.items()}


def test_it_refuses_without_the_explicit_trust_and_unpickles_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "code-ran"
    assert_payload_runs(marker)
    old = tmp_path / "old.ckpt"
    old.write_bytes(code_running_checkpoints(marker)["old header"])
    assert main(["convert-checkpoint", str(old), str(tmp_path / "new.ckpt")]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert not (tmp_path / "new.ckpt").exists() and not marker.exists()


def test_a_trusted_instance_checkpoint_converts_and_continues_exactly(tmp_path: Path) -> None:
    evaluator = trained()
    old = tmp_path / "old.ckpt"
    old.write_bytes(old_checkpoint(old_payload(InstanceState(evaluator=evaluator, instance="a"))))
    with pytest.raises(CheckpointRejected, match="convert-checkpoint") as refused:
        load_checkpoint(old)
    assert refused.value.reason == "old_format"

    new = tmp_path / "converted" / "a.ckpt"
    assert main(["convert-checkpoint", str(old), str(new), "--trust-pickle"]) == 0
    converted = load_checkpoint(new)
    assert isinstance(converted, InstanceState) and converted.instance == "a"
    expected, got = predictions(evaluator), predictions(converted.evaluator)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    # Converting it again (or a file already converted, in place) leaves it as it is.
    before = new.read_bytes()
    assert main(["convert-checkpoint", str(new), str(new), "--trust-pickle"]) == 0
    assert new.read_bytes() == before


def test_a_learner_process_pickled_as_a_pickle_of_its_learner_converts(tmp_path: Path) -> None:
    """The old learner process pickled itself as ``pickle.loads`` of its learner's pickle."""
    evaluator = trained(["lstm"])
    learner = evaluator.models["lstm"]

    class PickledProcess:
        def __reduce__(self) -> tuple:
            return pickle.loads, (old_payload(learner),)

    evaluator.models["lstm"] = PickledProcess()  # type: ignore[assignment]
    old = tmp_path / "old.ckpt"
    old.write_bytes(old_checkpoint(old_payload(InstanceState(evaluator=evaluator, instance="a"))))
    evaluator.models["lstm"] = learner
    assert main(["convert-checkpoint", str(old), str(tmp_path / "new.ckpt"), "--trust-pickle"]) == 0
    converted = load_checkpoint(tmp_path / "new.ckpt").evaluator
    np.testing.assert_array_equal(predictions(converted)["lstm"], predictions(evaluator)["lstm"])


#: Where a class was pickled from before it moved, and where it lives now.
MOVED = {
    b"stream_lstm.state.directory_store\nInstanceState": b"stream_lstm.state.store\nInstanceState",
    b"stream_lstm.evaluation.prequential\nScorer": b"stream_lstm.evaluation.scores\nScorer",
    b"stream_lstm.baselines\nNoChangeBaseline": b"stream_lstm.models.no_change\nNoChangeBaseline",
}


def test_checkpoints_naming_the_former_modules_and_retired_attributes_convert(tmp_path: Path) -> None:
    evaluator = trained(["logreg", "no_change"])
    evaluator.__dict__.update(_report_only=False, _added_guard_stats={})  # of versions that had them
    payload = old_payload(InstanceState(evaluator=evaluator, instance="a"), protocol=0)
    for old_name, new_name in MOVED.items():
        assert new_name in payload
        payload = payload.replace(new_name, old_name)
    old = tmp_path / "old.ckpt"
    old.write_bytes(old_checkpoint(payload))
    assert main(["convert-checkpoint", str(old), str(tmp_path / "new.ckpt"), "--trust-pickle"]) == 0
    converted = load_checkpoint(tmp_path / "new.ckpt").evaluator
    assert "_report_only" not in vars(converted)
    assert converted.scores["logreg"].whole() == evaluator.scores["logreg"].whole()


def test_a_checkpoint_directory_converts_with_its_partitions_and_epochs(tmp_path: Path) -> None:
    evaluator = trained()
    keys = sorted(evaluator.models["lstm"].tracked_keys())
    old = tmp_path / "old"
    # The old format held the LSTM's exported key states as tensors.
    key_state = evaluator.export_keys(keys)
    key_state["lstm"] = {
        name: torch.from_numpy(value) if name in ("h0", "c0", "window") else value
        for name, value in key_state["lstm"].items()
    }
    partition = PartitionState(
        topic="events", partition=1, offset=120, keys=keys, key_state=key_state, epoch=3
    )
    files = {
        old / "partitions" / "events" / "1.ckpt": partition,
        old / "instances" / "a.ckpt": InstanceState(evaluator=evaluator, instance="a"),
    }
    with evaluator.keys_set_aside():
        for path, state in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(old_checkpoint(old_payload(state)))
    (old / "partitions" / "events" / "1.epoch").write_text("3\n")

    new = tmp_path / "new"
    assert main(["convert-checkpoint", str(old), str(new), "--trust-pickle"]) == 0
    store = DirectoryStore(new)
    resumed = store.load_instance("a").evaluator
    loaded = store.load_partition(("events", 1))
    assert (loaded.offset, loaded.epoch, loaded.keys) == (120, 3, keys)
    assert (new / "partitions" / "events" / "1.epoch").read_text() == "3\n"
    resumed.import_keys(loaded.key_state)
    expected, got = predictions(evaluator), predictions(resumed)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_a_directory_without_checkpoints_or_a_missing_path_is_an_error(tmp_path: Path) -> None:
    assert main(["convert-checkpoint", str(tmp_path), str(tmp_path / "new"), "--trust-pickle"]) == 2
    assert main(["convert-checkpoint", str(tmp_path / "nope"), str(tmp_path / "new"), "--trust-pickle"]) == 2


def test_key_states_exported_before_their_feature_layout_travelled_convert(tmp_path: Path) -> None:
    evaluator = trained(["lstm"])
    keys = sorted(evaluator.models["lstm"].tracked_keys())
    key_state = evaluator.export_keys(keys)
    del key_state["lstm"]["feature_columns"]
    old = tmp_path / "0.ckpt"
    old.write_bytes(
        old_checkpoint(
            old_payload(PartitionState(topic="t", partition=0, offset=9, keys=keys, key_state=key_state))
        )
    )
    assert main(["convert-checkpoint", str(old), str(tmp_path / "new.ckpt"), "--trust-pickle"]) == 0
    converted = load_checkpoint(tmp_path / "new.ckpt")
    assert (
        converted.key_state["lstm"]["feature_columns"] == {}
        and sorted(converted.key_state["lstm"]["keys"]) == keys
    )
