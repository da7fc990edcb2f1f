"""The checkpoint topic as the topic store sees it: one partition read from the start, and writes
that wait for every acknowledgement. Two implementations, one per client library, so that the
store follows ``--kafka-client`` and reaches the cluster through the same security settings as
every other client of the service.

:func:`~stream_lstm.state.store_log_choice.open_store_log` creates the topic when it is
missing (one partition, compacted: the settings of
:data:`~stream_lstm.state.topic_admin.STORE_TOPIC_CONFIGS`) and returns a :class:`StoreLog`
positioned at the topic's beginning. A failure that may pass (the cluster is away, a request
timed out) is a :class:`StoreLogError`; one that cannot (the topic has several partitions) is a
plain :class:`~stream_lstm.errors.CheckpointError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from stream_lstm.errors import CheckpointError

#: Room for the record's overhead above a chunk, in the producer's and the fetch's size limits.
RECORD_HEADROOM = 64 * 1024


class StoreLogError(CheckpointError):
    """Reading or writing the checkpoint topic failed for a reason that may pass (retry)."""


@dataclass(frozen=True, slots=True)
class StoreRecord:
    """One record of the checkpoint topic."""

    key: bytes | None
    value: bytes | None
    #: Milliseconds since the epoch, or -1 when the record carries none.
    timestamp_ms: int


class StoreLog(Protocol):
    """The checkpoint topic's one partition, for :class:`~stream_lstm.state.topic_store.KafkaTopicStore`."""

    def end_offset(self) -> int:
        """The offset the next record written will get (asks the broker)."""
        ...

    def position(self) -> int:
        """The offset of the next record :meth:`poll` returns."""
        ...

    def poll(self, timeout_s: float) -> list[StoreRecord]:
        """The next records, in order; none when nothing arrives within ``timeout_s``."""
        ...

    def send(self, records: list[tuple[bytes, bytes | None]], timeout_s: float) -> None:
        """Produce ``(key, value)`` records (``None``: a tombstone) and wait until every one is
        acknowledged by all in-sync replicas; :class:`StoreLogError` if any is not."""
        ...

    def close(self, timeout_s: float) -> None: ...


def single_partition(topic: str, count: int) -> None:
    """Refuse a checkpoint topic of several partitions: the order of chunks and manifests matters.

    None (the topic is missing: it could not be created, or its metadata is not out yet) is a
    :class:`StoreLogError`, tried again until the store's connect timeout.
    """
    if count == 0:
        raise StoreLogError(
            f"checkpoint topic {topic!r} does not exist (yet): create it (compacted, one partition), "
            "or give this service the Create permission on it"
        )
    if count > 1:
        raise CheckpointError(
            f"checkpoint topic {topic!r} has {count} partitions; it needs exactly one (the order of "
            "chunks and manifests matters): use another topic"
        )
