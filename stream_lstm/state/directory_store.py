"""The checkpoint store as a directory that the instances share.

:class:`DirectoryStore` keeps the checkpoints of :mod:`stream_lstm.state.store` (per partition:
offset, counts, key states; per instance: weights, optimizer, scalers and scores; see the README
on how instances' weights relate) as files in one directory, which several instances share (a
volume in docker-compose)::

    ROOT/instances/INSTANCE_ID.ckpt        weights, optimizer, baselines, scores
    ROOT/instances/INSTANCE_ID.lock        held while that instance runs
    ROOT/partitions/TOPIC/PARTITION.ckpt   offset, counts, key states

Every file is written atomically (:mod:`stream_lstm.state.checkpoint`): a crash leaves the old or the new
version of each, so each partition's offset and key states always belong together. A state holding
non-finite weights, optimizer averages, scaler statistics or key states is never written, and a
file holding any is never loaded (:mod:`stream_lstm.state.finite_check`): :class:`CheckpointError`.

With a checkpoint key every file is signed, and a file that is unsigned or wrongly signed is refused
before anything decodes it (:mod:`stream_lstm.state.signing`). A refused file is counted
(``on_rejected``), and then, as a damaged one always was: this instance's own file and a partition's
file stop the service with the reason (skipping them would start their state afresh and overwrite
it at the next checkpoint, silently losing it on a wrong key), while another instance's file, only
read to warm-start a new instance, is skipped with a warning (docs/security.md).
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from stream_lstm.errors import CheckpointError, CheckpointRejected, ConfigError
from stream_lstm.kafka.interface import Partition
from stream_lstm.state.atomic_file import write_atomically
from stream_lstm.state.checkpoint import decode_checkpoint, encode_checkpoint, save_checkpoint
from stream_lstm.state.finite_check import check_finite, checked_state
from stream_lstm.state.signing import CheckpointSigner, seal, unseal
from stream_lstm.state.store import (
    SAFE_NAME,
    InstanceState,
    PartitionState,
    check_instance_id,
    check_not_stale,
)

# Imported from here too; they live in stream_lstm.state.store. Checkpoints written before they
# moved name this module for InstanceState and PartitionState, so those must stay importable here.
from stream_lstm.state.store import CheckpointStore as CheckpointStore
from stream_lstm.state.store import default_instance_id as default_instance_id

log = logging.getLogger(__name__)

#: How long a partition checkpoint's write waits for another writer's lock before it fails.
PARTITION_LOCK_TIMEOUT_S = 5.0


class DirectoryStore:
    """The checkpoint store as a directory of atomically written files (see the module doc).

    ``signer`` signs what is written and refuses what its keys did not sign (``None``: no
    checkpoint key); ``on_rejected(reason, name)`` is told of every file refused.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        signer: CheckpointSigner | None = None,
        on_rejected: Callable[[str, str], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.signer = signer
        self.on_rejected = on_rejected
        self._locks: dict[str, IO[bytes]] = {}

    def describe(self) -> str:
        return f"directory {self.root}"

    # ------------------------------------------------------------------ instances

    def _instance_path(self, instance_id: str) -> Path:
        return self.root / "instances" / f"{check_instance_id(instance_id)}.ckpt"

    def lock_instance(self, instance_id: str) -> None:
        """Claim ``instance_id`` for this process, so that two live instances never share one.

        Raises :class:`ConfigError` when another process holds it.
        """
        path = self.root / "instances" / f"{check_instance_id(instance_id)}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("ab")
        except OSError as error:
            raise ConfigError(f"cannot use checkpoint directory {self.root}: {error}") from error
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ConfigError(
                f"instance id {instance_id!r} is in use by another running instance on {self.root}; "
                "give each instance its own --instance-id"
            ) from None
        self._locks[instance_id] = handle

    def unlock_instance(self, instance_id: str) -> None:
        handle = self._locks.pop(instance_id, None)
        if handle is not None:
            handle.close()  # closing releases the lock

    def close(self) -> None:
        """Release every lock this store holds."""
        for instance_id in list(self._locks):
            self.unlock_instance(instance_id)

    def load_instance(self, instance_id: str, *, latest: bool = True) -> InstanceState | None:
        """This instance's last checkpoint, or ``None`` if it has none."""
        path = self._instance_path(instance_id)
        if not path.exists():
            return None
        try:
            return self._load(path, f"instances/{instance_id}", InstanceState)
        except CheckpointRejected as error:
            raise CheckpointRejected(
                f"{error}. This instance's own checkpoint is never started over silently: set the "
                "key it was written with (--checkpoint-key, or --checkpoint-previous-key during a "
                "rotation), or move the file aside to start this instance afresh",
                error.reason,
            ) from None

    def has_instance(self, instance_id: str) -> bool:
        """Whether ``instance_id`` has a checkpoint."""
        return self._instance_path(instance_id).exists()

    def newest_other_instance(self, instance_id: str, *, latest: bool = True) -> InstanceState | None:
        """The most recently written checkpoint of another instance (to warm-start a new one)."""
        directory = self.root / "instances"
        if not directory.is_dir():
            return None
        candidates = sorted(
            (p for p in directory.glob("*.ckpt") if p.stem != instance_id),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for path in candidates:
            try:
                return self._load(path, f"instances/{path.stem}", InstanceState)
            except CheckpointError as error:
                log.warning("skipping %s: %s", path, error)
        return None

    def save_instance(self, state: InstanceState) -> int:
        """Write an instance's checkpoint; return its size in bytes."""
        path = self._instance_path(state.instance)
        check_finite(state, str(path), saving=True)
        return self._write(path, f"instances/{state.instance}", state)

    # ------------------------------------------------------------------ partitions

    def _partition_path(self, partition: Partition) -> Path:
        topic, number = partition
        if not SAFE_NAME.match(topic):
            raise CheckpointError(f"topic name {topic!r} cannot name a checkpoint file")
        return self.root / "partitions" / topic / f"{int(number)}.ckpt"

    def load_partition(self, partition: Partition, *, latest: bool = True) -> PartitionState | None:
        """The partition's last checkpoint, or ``None`` if nobody has written one."""
        path = self._partition_path(partition)
        if not path.exists():
            return None
        return self._load(path, _partition_name(partition), PartitionState)

    def save_partition(self, state: PartitionState) -> int:
        """Write a partition's checkpoint; return its size in bytes.

        Raises :class:`StaleCheckpointError` when the stored checkpoint has a later epoch. The
        epoch is kept beside the checkpoint too (``N.epoch``), so the check reads a number, not
        the checkpoint. The check and the write hold a lock of the partition (``N.lock``), so two
        processes on one host cannot both pass it; on a shared network disk that depends on the
        disk's locks.
        """
        path = self._partition_path((state.topic, state.partition))
        check_finite(state, str(path), saving=True)  # before the epoch moves
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = path.with_suffix(".lock").open("ab")
        except OSError as error:
            raise CheckpointError(f"cannot write checkpoint {path}: {error}") from error
        with lock:  # closing it releases the lock
            _lock_within(lock, PARTITION_LOCK_TIMEOUT_S, path)
            check_not_stale(state, self._stored_epoch(path), str(path))
            # The epoch goes first: a crash before the checkpoint leaves it at least as high as
            # the checkpoint's, which refuses no owner that the checkpoint would not refuse.
            epoch_file = path.with_suffix(".epoch")
            partial = epoch_file.with_suffix(".epoch.tmp")
            try:
                partial.write_text(f"{int(state.epoch)}\n")
                partial.replace(epoch_file)
            except OSError as error:
                raise CheckpointError(f"cannot write checkpoint {path}: {error}") from error
            return self._write(path, _partition_name((state.topic, state.partition)), state)

    def stored_epochs(self, partitions: Iterable[Partition]) -> dict[Partition, int | None]:
        """The epoch of each partition's checkpoint (from the file beside it), ``None`` without one."""
        return {partition: self._stored_epoch(self._partition_path(partition)) for partition in partitions}

    def refresh(self) -> None:
        """Nothing to do: every load reads the files."""

    def partitions(self) -> list[Partition]:
        """Every partition with a checkpoint in the store."""
        found = []
        for path in sorted((self.root / "partitions").glob("*/*.ckpt")):
            try:
                found.append((path.parent.name, int(path.stem)))
            except ValueError:
                continue
        return found

    # ------------------------------------------------------------------ files

    def _load(self, path: Path, name: str, kind: type) -> Any:
        """The ``kind`` in the checkpoint file ``path`` of checkpoint ``name``, verified (with a
        key) before it is decoded, and checked to be finite; a refusal is counted."""
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
        try:
            return checked_state(
                decode_checkpoint(unseal(self.signer, data, name, str(path)), str(path)), kind, str(path)
            )
        except CheckpointError as error:
            if self.on_rejected is not None:
                self.on_rejected(error.reason if isinstance(error, CheckpointRejected) else "damaged", name)
            raise

    def _write(self, path: Path, name: str, state: Any) -> int:
        """Write ``state`` to ``path`` atomically, signed with a key; return its size."""
        if self.signer is None:
            return save_checkpoint(path, state)
        return write_atomically(path, seal(self.signer, encode_checkpoint(state), name))

    def _stored_epoch(self, path: Path) -> int | None:
        """The epoch of the partition checkpoint at ``path``, from the file beside it (or, written
        before there was one, from the checkpoint); ``None`` without a readable one."""
        try:
            return int(path.with_suffix(".epoch").read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as error:
            log.warning("cannot read the epoch beside %s (%s): reading the checkpoint's", path, error)
        if not path.exists():
            return None
        try:
            name = _partition_name((path.parent.name, int(path.stem)))
            return int(self._load(path, name, PartitionState).epoch)
        except CheckpointError as error:
            log.warning("%s; the new checkpoint replaces it", error)
            return None


def _partition_name(partition: Partition) -> str:
    """A partition checkpoint's name, as signatures bind it (the topic store's record key)."""
    topic, number = partition
    return f"partitions/{topic}/{int(number)}"


def _lock_within(handle: IO[bytes], timeout_s: float, path: Path) -> None:
    """Take the exclusive lock of ``handle``, or raise :class:`CheckpointError` after ``timeout_s``
    (its holder may be a writer that is frozen, the very case the lock guards against)."""
    deadline = time.monotonic() + timeout_s
    pause = 0.001
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise CheckpointError(
                    f"cannot write checkpoint {path}: another process has held its lock for {timeout_s:g} s"
                ) from None
            time.sleep(pause)  # another writer holds it for the moment of one write
            pause = min(pause * 2, 0.05)
        except OSError as error:
            raise CheckpointError(f"cannot lock checkpoint {path}: {error}") from error
