"""Where the service keeps its state between runs and hands partitions over: a checkpoint store.

The state is split the way Kafka splits the work. Each **partition** has its own checkpoint: its
next offset, how many of its messages were handled, and the per-key state (recurrent states,
windows, previous labels) of the keys seen on it. Whoever owns the partition next, this instance
after a restart or another instance after a rebalance, loads it before consuming and continues
those keys exactly. Each **instance** has its own checkpoint of its weights, optimizer, scalers
and scores (see the README on how instances' weights relate).

:class:`DirectoryStore` keeps them as files in one directory, which several instances share (a
volume in docker-compose)::

    ROOT/instances/INSTANCE_ID.ckpt        weights, optimizer, baselines, scores
    ROOT/instances/INSTANCE_ID.lock        held while that instance runs
    ROOT/partitions/TOPIC/PARTITION.ckpt   offset, counts, key states

Every file is written atomically (:mod:`stream_lstm.state.checkpoint`): a crash leaves the old or the new
version of each, so each partition's offset and key states always belong together. A state holding
non-finite weights, optimizer averages, scaler statistics or key states is never written, and a
file holding any is never loaded (:mod:`stream_lstm.state.finite_check`): :class:`CheckpointError`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from stream_lstm import __version__
from stream_lstm.errors import CheckpointError, ConfigError
from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.kafka.interface import Partition
from stream_lstm.state.checkpoint import load_checkpoint, save_checkpoint
from stream_lstm.state.finite_check import check_finite

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


@dataclass
class PartitionState:
    """One partition's point in the stream and the state of its keys."""

    topic: str
    partition: int
    #: The next offset to read (the last handled offset + 1).
    offset: int
    #: Messages of this partition predicted and learned, and sent to the dead-letter topic. When
    #: every message was handled exactly once from offset 0, their sum equals ``offset``.
    events: int = 0
    dead_letters: int = 0
    #: The keys seen on this partition whose state is held below.
    keys: list[str] = field(default_factory=list)
    #: :meth:`PrequentialEvaluator.export_keys` of those keys.
    key_state: dict[str, Any] = field(default_factory=dict)
    #: The instance that wrote this checkpoint.
    instance: str = ""
    version: str = __version__


@dataclass
class InstanceState:
    """One instance's learner, without any key state (that lives with the partitions)."""

    evaluator: PrequentialEvaluator
    instance: str
    version: str = __version__


def check_instance_id(instance_id: str) -> str:
    """An instance id names files: letters, digits, ``.``, ``_`` and ``-`` only."""
    if not _SAFE_NAME.match(instance_id) or instance_id in (".", ".."):
        raise ConfigError(f"instance id {instance_id!r} must be 1-200 letters, digits, '.', '_' or '-'")
    return instance_id


class CheckpointStore(Protocol):
    """What the service needs of a checkpoint store: :class:`DirectoryStore`, or
    :class:`~stream_lstm.state.topic_store.KafkaTopicStore` when no disk is shared.

    ``latest=False`` on a load allows a store to answer from what it already knows instead of
    asking its backend (a rollback only needs this instance's own last writes, and may happen
    while the backend is away); a directory always reads its files.
    """

    #: The store's directory, if it has one.
    @property
    def root(self) -> Path | None: ...

    def describe(self) -> str: ...

    def lock_instance(self, instance_id: str) -> None: ...

    def unlock_instance(self, instance_id: str) -> None: ...

    def close(self) -> None: ...

    def load_instance(self, instance_id: str, *, latest: bool = True) -> InstanceState | None: ...

    def has_instance(self, instance_id: str) -> bool: ...

    def newest_other_instance(self, instance_id: str, *, latest: bool = True) -> InstanceState | None: ...

    def save_instance(self, state: InstanceState) -> int: ...

    def load_partition(self, partition: Partition, *, latest: bool = True) -> PartitionState | None: ...

    def save_partition(self, state: PartitionState) -> int: ...

    def partitions(self) -> list[Partition]: ...

    def refresh(self) -> None: ...


class DirectoryStore:
    """The checkpoint store as a directory of atomically written files (see the module doc)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
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
        return _load(path, InstanceState)

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
                return _load(path, InstanceState)
            except CheckpointError as error:
                log.warning("skipping %s: %s", path, error)
        return None

    def save_instance(self, state: InstanceState) -> int:
        """Write an instance's checkpoint; return its size in bytes."""
        return _save(self._instance_path(state.instance), state)

    # ------------------------------------------------------------------ partitions

    def _partition_path(self, partition: Partition) -> Path:
        topic, number = partition
        if not _SAFE_NAME.match(topic):
            raise CheckpointError(f"topic name {topic!r} cannot name a checkpoint file")
        return self.root / "partitions" / topic / f"{int(number)}.ckpt"

    def load_partition(self, partition: Partition, *, latest: bool = True) -> PartitionState | None:
        """The partition's last checkpoint, or ``None`` if nobody has written one."""
        path = self._partition_path(partition)
        if not path.exists():
            return None
        return _load(path, PartitionState)

    def save_partition(self, state: PartitionState) -> int:
        """Write a partition's checkpoint; return its size in bytes."""
        return _save(self._partition_path((state.topic, state.partition)), state)

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


def _expect(value: Any, kind: type, path: Path) -> Any:
    if not isinstance(value, kind):
        raise CheckpointError(f"{path} does not hold a {kind.__name__}")
    return value


def _load(path: Path, kind: type) -> Any:
    """The ``kind`` in the checkpoint file ``path``, once checked to be finite."""
    state = _expect(load_checkpoint(path), kind, path)
    check_finite(state, str(path), saving=False)
    return state


def _save(path: Path, state: Any) -> int:
    """Write ``state`` to ``path`` unless it holds non-finite values (then nothing is written)."""
    check_finite(state, str(path), saving=True)
    return save_checkpoint(path, state)


def default_instance_id() -> str:
    """The host name (unique per container): stable across restarts of the same replica."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", os.uname().nodename)[:200].strip(".")
    return name or "stream-lstm"
