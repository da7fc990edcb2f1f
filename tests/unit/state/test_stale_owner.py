"""A partition's checkpoint is never overwritten by an owner older than the one that wrote it.

Each owner of a partition writes one more than the epoch of the checkpoint it continued from; a
store refuses a lower epoch (:class:`StaleCheckpointError`). These are the directory store and
the in-memory one; the topic store is checked on both brokers (tests/integration/state).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_lstm.errors import CheckpointError, StaleCheckpointError
from stream_lstm.state.directory_store import DirectoryStore
from stream_lstm.state.store import CheckpointStore, PartitionState
from stream_lstm.testing import MemoryStore


def state(offset: int, epoch: int, instance: str) -> PartitionState:
    return PartitionState(
        topic="in", partition=0, offset=offset, events=offset, instance=instance, epoch=epoch
    )


@pytest.fixture(params=["directory", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    return DirectoryStore(tmp_path / "checkpoints") if request.param == "directory" else MemoryStore()


def test_a_lower_epoch_is_refused_and_the_later_owners_checkpoint_stays(store: CheckpointStore) -> None:
    assert store.stored_epochs([("in", 0)]) == {("in", 0): None}
    store.save_partition(state(100, epoch=1, instance="a"))
    store.save_partition(state(150, epoch=1, instance="a"))  # the same owner, later
    assert store.stored_epochs([("in", 0)]) == {("in", 0): 1}
    store.save_partition(state(180, epoch=2, instance="b"))  # b took over from a's 150
    assert store.stored_epochs([("in", 0), ("in", 1)]) == {
        ("in", 0): 2,
        ("in", 1): None,
    }  # what a can look at first
    with pytest.raises(StaleCheckpointError, match=r"epoch 1.*epoch 2") as refused:
        store.save_partition(state(170, epoch=1, instance="a"))  # a, frozen meanwhile, wakes up
    assert isinstance(refused.value, CheckpointError)
    saved = store.load_partition(("in", 0))
    assert saved is not None and (saved.offset, saved.instance, saved.epoch) == (180, "b", 2)
    store.save_partition(state(200, epoch=3, instance="a"))  # a took it back from b's 180
    assert store.load_partition(("in", 0)).offset == 200


def test_a_checkpoint_without_an_epoch_reads_as_epoch_0(store: CheckpointStore) -> None:
    old = state(50, epoch=0, instance="a")
    del old.epoch  # as unpickled from a checkpoint written before epochs: the class default
    assert old.epoch == 0
    store.save_partition(old)
    store.save_partition(state(60, epoch=1, instance="b"))
    assert store.load_partition(("in", 0)).epoch == 1


def test_the_directory_keeps_the_epoch_beside_the_checkpoint_and_falls_back_to_it(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.save_partition(state(10, epoch=4, instance="a"))
    path = tmp_path / "partitions" / "in" / "0.ckpt"
    epoch_file = path.with_suffix(".epoch")
    assert epoch_file.read_text().strip() == "4"
    path.write_bytes(path.read_bytes()[:-50])  # a damaged checkpoint: the epoch still says 4
    with pytest.raises(StaleCheckpointError):
        store.save_partition(state(20, epoch=3, instance="b"))
    epoch_file.unlink()  # written before epoch files: the checkpoint's own is read, here none
    store.save_partition(state(20, epoch=1, instance="b"))
    assert store.load_partition(("in", 0)).offset == 20
    epoch_file.write_text("not a number")
    with pytest.raises(StaleCheckpointError):  # the checkpoint's epoch (1) is read instead
        store.save_partition(state(30, epoch=0, instance="c"))
    assert store.partitions() == [("in", 0)]
