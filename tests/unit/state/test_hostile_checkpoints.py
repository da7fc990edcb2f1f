"""A checkpoint built to run code is refused, and runs nothing: the stores never unpickle.

Each payload would create a marker file if it were ever unpickled (a test first checks that it
does, with plain ``pickle.loads``). Placed where the directory store reads its checkpoints, it is
refused with the reason of its kind, and the marker never appears.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_lstm.errors import CheckpointRejected
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.messages.events import Event
from stream_lstm.state.checkpoint import decode_checkpoint
from stream_lstm.state.directory_store import DirectoryStore, InstanceState
from stream_lstm.testing.memory_store import MemoryStore
from tests.old_checkpoints import assert_payload_runs, code_running_checkpoints

REASONS = {"old header": "old_format", "raw pickle": "not_a_checkpoint"}


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    marker = tmp_path / "code-ran"
    assert_payload_runs(marker)
    return marker


@pytest.mark.parametrize("form", sorted(REASONS))
def test_a_code_running_instance_checkpoint_file_is_refused_and_runs_nothing(
    form: str, marker: Path, tmp_path: Path
) -> None:
    store = DirectoryStore(tmp_path / "store")
    path = tmp_path / "store" / "instances" / "evil.ckpt"
    path.parent.mkdir(parents=True)
    path.write_bytes(code_running_checkpoints(marker)[form])
    with pytest.raises(CheckpointRejected) as refused:
        store.load_instance("evil")
    assert refused.value.reason == REASONS[form] and str(path) in str(refused.value)
    if form == "old header":
        assert "convert-checkpoint" in str(refused.value) and "--trust-pickle" in str(refused.value)
    # A new instance warm-starting skips it for a good one.
    evaluator = PrequentialEvaluator(build_models(["no_change"]))
    evaluator.process([Event(key="k", label=1)])
    store.save_instance(InstanceState(evaluator=evaluator, instance="good"))
    assert store.newest_other_instance("new").instance == "good"
    assert not marker.exists()


@pytest.mark.parametrize("form", sorted(REASONS))
def test_a_code_running_partition_checkpoint_file_is_refused_and_runs_nothing(
    form: str, marker: Path, tmp_path: Path
) -> None:
    store = DirectoryStore(tmp_path / "store")
    path = tmp_path / "store" / "partitions" / "events" / "0.ckpt"
    path.parent.mkdir(parents=True)
    path.write_bytes(code_running_checkpoints(marker)[form])
    with pytest.raises(CheckpointRejected) as refused:
        store.load_partition(("events", 0))
    assert refused.value.reason == REASONS[form]
    assert store.partitions() == [("events", 0)]
    assert not marker.exists()


@pytest.mark.parametrize("form", sorted(REASONS))
def test_code_running_bytes_are_refused_by_the_decoder_itself(form: str, marker: Path) -> None:
    """What every store calls, the topic store and the tests' memory store included."""
    with pytest.raises(CheckpointRejected) as refused:
        decode_checkpoint(code_running_checkpoints(marker)[form], "record")
    assert refused.value.reason == REASONS[form]
    store = MemoryStore()
    store._instances["evil"] = [code_running_checkpoints(marker)[form]]
    with pytest.raises(CheckpointRejected):
        store.load_instance("evil")
    assert not marker.exists()
