"""A checkpoint store in memory, for tests: every version kept, writes refused on demand.

:class:`MemoryStore` keeps what :class:`~stream_lstm.state.directory_store.DirectoryStore`
keeps, with the same checks (finite values at save and at load), encoded as the checkpoint
format does, so a load gives new objects as a file would. It also keeps every version written,
oldest first (``instance_history``, ``partition_history``), so a test can check what was saved
at each checkpoint, and refuses the next writes when told to (:meth:`refuse_writes`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stream_lstm.errors import CheckpointError, ConfigError
from stream_lstm.kafka.interface import Partition
from stream_lstm.state.checkpoint import decode_checkpoint, encode_checkpoint
from stream_lstm.state.finite_check import check_finite, checked_state
from stream_lstm.state.store import InstanceState, PartitionState, check_instance_id, check_not_stale


class MemoryStore:
    """A :class:`~stream_lstm.state.store.CheckpointStore` in memory (see the module doc)."""

    root: Path | None = None

    def __init__(self) -> None:
        self._instances: dict[str, list[bytes]] = {}
        self._partitions: dict[Partition, list[bytes]] = {}
        self._locked: set[str] = set()
        self._refusals: list[CheckpointError] = []
        #: Every write, in order: ``("instance", id)`` or ``("partition", (topic, number))``.
        self.writes: list[tuple[str, Any]] = []

    def describe(self) -> str:
        return "memory store"

    def refuse_writes(self, count: int = 1, reason: str = "the store refused the write (scripted)") -> None:
        """The next ``count`` saves raise :class:`CheckpointError` and write nothing."""
        self._refusals.extend(CheckpointError(reason) for _ in range(count))

    # ------------------------------------------------------------------ instances

    def lock_instance(self, instance_id: str) -> None:
        if check_instance_id(instance_id) in self._locked:
            raise ConfigError(f"instance id {instance_id!r} is in use by another running instance")
        self._locked.add(instance_id)

    def unlock_instance(self, instance_id: str) -> None:
        self._locked.discard(instance_id)

    def close(self) -> None:
        self._locked.clear()

    def load_instance(self, instance_id: str, *, latest: bool = True) -> InstanceState | None:
        versions = self._instances.get(instance_id)
        return _decode(versions[-1], f"instance {instance_id}", InstanceState) if versions else None

    def has_instance(self, instance_id: str) -> bool:
        return instance_id in self._instances

    def newest_other_instance(self, instance_id: str, *, latest: bool = True) -> InstanceState | None:
        for kind, name in reversed(self.writes):
            if kind == "instance" and name != instance_id:
                return self.load_instance(name)
        return None

    def save_instance(self, state: InstanceState) -> int:
        data = self._encode(state, f"instance {state.instance}")
        self._instances.setdefault(state.instance, []).append(data)
        self.writes.append(("instance", state.instance))
        return len(data)

    def instance_history(self, instance_id: str) -> list[InstanceState]:
        """Every version of ``instance_id``'s checkpoint, oldest first."""
        where = f"instance {instance_id}"
        return [_decode(data, where, InstanceState) for data in self._instances.get(instance_id, [])]

    # ------------------------------------------------------------------ partitions

    def load_partition(self, partition: Partition, *, latest: bool = True) -> PartitionState | None:
        versions = self._partitions.get(partition)
        return _decode(versions[-1], f"partition {partition}", PartitionState) if versions else None

    def save_partition(self, state: PartitionState) -> int:
        partition = (state.topic, state.partition)
        stored = self.load_partition(partition)
        check_not_stale(state, stored.epoch if stored is not None else None, f"partition {partition}")
        data = self._encode(state, f"partition {partition}")
        self._partitions.setdefault(partition, []).append(data)
        self.writes.append(("partition", partition))
        return len(data)

    def stored_epochs(self, partitions: Iterable[Partition]) -> dict[Partition, int | None]:
        return {
            p: stored.epoch if (stored := self.load_partition(p)) is not None else None for p in partitions
        }

    def partition_history(self, partition: Partition) -> list[PartitionState]:
        """Every version of ``partition``'s checkpoint, oldest first."""
        where = f"partition {partition}"
        return [_decode(data, where, PartitionState) for data in self._partitions.get(partition, [])]

    def partitions(self) -> list[Partition]:
        return sorted(self._partitions)

    def refresh(self) -> None:
        """Nothing to do: there is no backend to catch up with."""

    def _encode(self, state: Any, where: str) -> bytes:
        if self._refusals:
            raise self._refusals.pop(0)
        check_finite(state, where, saving=True)
        return encode_checkpoint(state)


def _decode(data: bytes, where: str, kind: type) -> Any:
    return checked_state(decode_checkpoint(data, where), kind, where)
