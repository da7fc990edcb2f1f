"""The checkpoint store's contract: what is saved per partition and per instance, and how.

The state is split the way Kafka splits the work. Each **partition** has its own checkpoint
(:class:`PartitionState`): its next offset, how many of its messages were handled, and the
per-key state (recurrent states, windows, previous labels) of the keys seen on it. Whoever owns
the partition next, this instance after a restart or another instance after a rebalance, loads
it before consuming and continues those keys exactly. Each **instance** has its own checkpoint
(:class:`InstanceState`) of its weights, optimizer, scalers and scores.

Two stores keep them (:class:`CheckpointStore`): a directory that the instances share
(:class:`~stream_lstm.state.directory_store.DirectoryStore`), or a compacted Kafka topic
(:class:`~stream_lstm.state.topic_store.KafkaTopicStore`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from stream_lstm import __version__
from stream_lstm.errors import ConfigError, StaleCheckpointError
from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.kafka.interface import Partition

#: What may name a file of a store: an instance id, or a topic in the directory store.
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


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
    #: Which ownership of the partition wrote this: each owner's epoch is later than the
    #: checkpoint's it continued from (:func:`stream_lstm.service.ledger.ownership_epoch`). A
    #: store refuses a checkpoint whose epoch is below the stored one's (:func:`check_not_stale`):
    #: its writer lost the partition to a later owner and has not noticed yet. Checkpoints
    #: written before epochs existed read as 0.
    epoch: int = 0


@dataclass
class InstanceState:
    """One instance's learner, without any key state (that lives with the partitions)."""

    evaluator: PrequentialEvaluator
    instance: str
    version: str = __version__


def is_stale(epoch: int, stored_epoch: int | None) -> bool:
    """Whether an owner at ownership ``epoch`` is older than the one that wrote the stored
    checkpoint (``stored_epoch``; ``None``: none, or one that cannot be read)."""
    return stored_epoch is not None and epoch < stored_epoch


def check_not_stale(state: PartitionState, stored_epoch: int | None, where: str) -> None:
    """Raise :class:`StaleCheckpointError` if ``state`` is older than the stored checkpoint.

    ``stored_epoch`` is the epoch of the checkpoint the store holds (``None``: none, or one that
    cannot be read, which the write then replaces).
    """
    if is_stale(state.epoch, stored_epoch):
        raise StaleCheckpointError(
            f"{where} not written: this instance holds it at ownership epoch {state.epoch}, and a "
            f"later owner wrote epoch {stored_epoch}; the partition was taken over"
        )


def check_instance_id(instance_id: str) -> str:
    """An instance id names files: letters, digits, ``.``, ``_`` and ``-`` only."""
    if not SAFE_NAME.match(instance_id) or instance_id in (".", ".."):
        raise ConfigError(f"instance id {instance_id!r} must be 1-200 letters, digits, '.', '_' or '-'")
    return instance_id


class CheckpointStore(Protocol):
    """What the service needs of a checkpoint store:
    :class:`~stream_lstm.state.directory_store.DirectoryStore`, or
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

    def stored_epochs(self, partitions: Iterable[Partition]) -> dict[Partition, int | None]:
        """The ownership epoch of each partition's stored checkpoint, as :meth:`save_partition`
        checks it (``None``: none), without reading the checkpoints themselves."""
        ...

    def partitions(self) -> list[Partition]: ...

    def refresh(self) -> None: ...


def default_instance_id() -> str:
    """The host name (unique per container): stable across restarts of the same replica."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", os.uname().nodename)[:200].strip(".")
    return name or "stream-lstm"
