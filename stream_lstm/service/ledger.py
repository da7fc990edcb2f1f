"""The per-partition ledger: what this instance owns, how far it has read, and what is owed.

Every partition the group gave this instance is in one phase (see :class:`PartitionPhase` and
the table in docs/architecture.md): read normally, waiting for a seek that a rollback could not
do yet, waiting for its committed offset to be read (exactly-once), or replaying events that a
crashed run published and committed after its last checkpoint (they are learned, not published
again). The ledger also keeps, per partition, the next offset to read and the counts and keys
since the last checkpoint, which the checkpointer writes.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from stream_lstm.kafka.interface import Message, Partition
from stream_lstm.messages.events import Event


class PartitionPhase(enum.Enum):
    """Where one partition stands; the ledger moves it, the table in docs/architecture.md says when."""

    NOT_OWNED = "not owned"
    READING = "reading"
    REWINDING = "waiting for a seek"
    CHECKING = "waiting for its committed offset"
    REPLAYING = "replaying up to its committed offset"


def ownership_epoch(continued_from: int | None) -> int:
    """The epoch of a new ownership of a partition: the clock in milliseconds when the group gave
    it, and later than the checkpoint's it continues from (``continued_from``; ``None`` without).

    Its checkpoints carry it, and a store refuses one below the stored epoch: a stale owner
    cannot overwrite a later one's. One more than the checkpoint's orders owners that continue
    from each other; the clock orders two that both started without a checkpoint (the stale one
    before its first write), as long as the hosts' clocks differ by less than a rebalance takes.
    An epoch is set when the partition is assigned (and its checkpoint loaded) and kept until it
    is released: a rollback keeps it, so a stale owner that rolls back stays stale.
    """
    now_ms = time.time_ns() // 1_000_000
    return now_ms if continued_from is None else max(continued_from + 1, now_ms)


@dataclass
class PartitionProgress:
    """What this instance holds of one partition between checkpoints."""

    offset: int  # next offset to read, i.e. last handled offset + 1
    events: int = 0  # messages predicted and learned
    dead_letters: int = 0
    keys: set[str] = field(default_factory=set)  # keys seen here whose state may be tracked
    dirty: bool = False  # changed since its last checkpoint


class Ledger:
    """Owned partitions, their progress and their phase; the one writer of all three."""

    def __init__(self) -> None:
        #: What the group gave this instance, per the rebalance callbacks.
        self.owned: set[Partition] = set()
        #: The ownership epoch of each owned partition (see :func:`ownership_epoch`).
        self.epochs: dict[Partition, int] = {}
        #: Progress of the partitions read (or restored from a checkpoint) since they were assigned.
        self.progress: dict[Partition, PartitionProgress] = {}
        #: Messages handled (learned or dead-lettered) since the last checkpoint.
        self.since_checkpoint = 0
        self._replay_until: dict[Partition, int] = {}
        self._unchecked: set[Partition] = set()  # assigned, committed offset not read yet
        self._needs_seek: set[Partition] = set()  # a rollback could not rewind these yet
        #: The first offset read of each owned partition, kept through rollbacks: where a
        #: rollback goes back to when the partition has no checkpoint yet.
        self.first_read: dict[Partition, int] = {}

    # ------------------------------------------------------------------ phases

    def phase(self, partition: Partition) -> PartitionPhase:
        """The phase of ``partition`` now."""
        if partition not in self.owned:
            return PartitionPhase.NOT_OWNED
        if partition in self._needs_seek:
            return PartitionPhase.REWINDING
        if partition in self._unchecked:
            return PartitionPhase.CHECKING
        if partition in self._replay_until:
            return PartitionPhase.REPLAYING
        return PartitionPhase.READING

    def assign(self, partitions: Iterable[Partition]) -> None:
        """The group gave ``partitions`` to this instance: each new one gets its ownership epoch."""
        for partition in partitions:
            if partition not in self.owned:
                self.epochs[partition] = ownership_epoch(None)
                self.owned.add(partition)

    def continue_epoch(self, partition: Partition, checkpoint_epoch: int) -> None:
        """``partition`` continues from a checkpoint of ``checkpoint_epoch``: its epoch must be later."""
        self.epochs[partition] = max(self.epochs.get(partition, 0), ownership_epoch(checkpoint_epoch))

    def release(self, partitions: Sequence[Partition]) -> list[PartitionProgress]:
        """The group took ``partitions`` back: forget them; return the progress that was held."""
        self.owned.difference_update(partitions)
        released = []
        for partition in partitions:
            progress = self.progress.pop(partition, None)
            if progress is not None:
                released.append(progress)
            self._replay_until.pop(partition, None)
            self._unchecked.discard(partition)
            self._needs_seek.discard(partition)
            self.first_read.pop(partition, None)
            self.epochs.pop(partition, None)
        return released

    def rewind_needed(self, partitions: Iterable[Partition]) -> None:
        """These must be sought before they are read again (after a rollback, or a failed seek)."""
        self._needs_seek.update(partitions)

    def waiting_for_seek(self) -> list[Partition]:
        return sorted(self._needs_seek)

    def rewound(self, partition: Partition) -> None:
        self._needs_seek.discard(partition)

    def check_committed(self, partition: Partition) -> None:
        """Exactly-once: read the group's committed offset of ``partition`` before it is processed."""
        self._unchecked.add(partition)

    def unchecked(self) -> bool:
        return bool(self._unchecked)

    def next_unchecked(self) -> Partition | None:
        return self._unchecked.pop() if self._unchecked else None

    def committed_read(self, partition: Partition, committed: int | None) -> None:
        """The group had committed ``committed`` for ``partition``: replay up to it, if ahead."""
        progress = self.progress.get(partition)
        if committed is not None and committed > (progress.offset if progress else 0):
            self._replay_until[partition] = committed

    def is_replay(self, partition: Partition, offset: int) -> bool:
        """Whether the message at ``offset`` was published by a run before: learn it, publish nothing."""
        return offset < self._replay_until.get(partition, -1)

    # ------------------------------------------------------------------ progress

    def record(
        self,
        handled: Sequence[Message],
        learned: Sequence[tuple[Message, Event]],
        dead: dict[Partition, int],
    ) -> None:
        """A batch is done: ``handled`` moves the offsets, ``learned`` and ``dead`` the counts."""
        progress_of = self.progress
        for message in handled:
            partition = (message.topic, message.partition)
            progress = progress_of.get(partition)
            if progress is None:
                progress = progress_of[partition] = PartitionProgress(offset=message.offset)
                self.first_read.setdefault(partition, message.offset)
            progress.offset = message.offset + 1
            progress.dirty = True
        for message, event in learned:
            progress = progress_of[(message.topic, message.partition)]
            progress.events += 1
            progress.keys.add(event.key)
        for partition, count in dead.items():
            progress_of[partition].dead_letters += count
        self.since_checkpoint += len(handled)

    def restored(self, partition: Partition, progress: PartitionProgress) -> None:
        """``partition`` continues from its checkpoint."""
        self.progress[partition] = progress

    def offsets(self) -> dict[Partition, int]:
        """The next offset to read of every partition with progress: what a checkpoint records."""
        return {partition: progress.offset for partition, progress in self.progress.items()}

    def offsets_to_commit(self, offsets: dict[Partition, int]) -> dict[Partition, int]:
        """``offsets`` as the group may commit them: while replaying, the group's committed offset is
        ahead of the learner, and is never moved back."""
        return {p: max(o, self._replay_until.get(p, 0)) for p, o in offsets.items()}

    def checkpointed(self, offsets: dict[Partition, int]) -> None:
        """A checkpoint of ``offsets`` was written: replays that it passed are over."""
        self.since_checkpoint = 0
        self._replay_until = {p: o for p, o in self._replay_until.items() if o > offsets.get(p, 0)}

    def rolled_back(self) -> None:
        """A rollback threw away everything since the last checkpoints."""
        self.progress = {}
        self._replay_until = {}
        self.since_checkpoint = 0
