"""The service's view of Kafka: plain records and partitions, and one small client interface.

Two clients implement :class:`KafkaClient`: kafka-python (the default, pure Python,
:mod:`stream_lstm.kafka.kafka_python`) and confluent-kafka (librdkafka, an optional extra that
is several times faster, :mod:`stream_lstm.kafka.confluent`); ``--kafka-client`` picks one. The
service never touches a client library. Offsets follow Kafka's convention throughout: the offset
stored or committed for a partition is the NEXT offset to read, i.e. the last processed offset
plus one. The errors of this area (:class:`KafkaIOError` and its kinds) are declared here; how
the clients build them from failed deliveries is :mod:`stream_lstm.kafka.delivery`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from stream_lstm.errors import StreamLSTMError
from stream_lstm.kafka.security import PLAINTEXT, KafkaSecurity

#: How long a blocking consumer call (committed offsets, commits) may wait for the broker.
BLOCKING_TIMEOUT_MS = 5_000

#: The client libraries ``--kafka-client`` accepts; the first is the default.
KAFKA_CLIENTS = ("kafka-python", "confluent")

Partition = tuple[str, int]

#: The coordinates (topic, partition, offset) of the input message an output record stands for.
Source = tuple[str, int, int]

#: Codes of :class:`RejectedRecord`: why the producer or the broker refused a record for good.
RECORD_TOO_LARGE = "record_too_large"
INVALID_RECORD = "invalid_record"

#: :attr:`RejectedRecord.detail` keeps at most this many characters of the library's text.
DETAIL_CHARS = 300


class KafkaIOError(StreamLSTMError):
    """A Kafka operation failed in a way the caller must handle (retry, or give up)."""


class DeliveryPending(KafkaIOError):
    """Records are not acknowledged yet (the broker is slow or away); the producer keeps trying."""


@dataclass(frozen=True)
class RejectedRecord:
    """An output record the producer or broker refused for good: sending it again cannot help."""

    #: The topic it was produced to.
    topic: str
    #: The input message it stands for, as given to :meth:`KafkaClient.produce`.
    source: Source | None
    #: :data:`RECORD_TOO_LARGE` or :data:`INVALID_RECORD` (bounded: fit for a metric label).
    code: str
    #: The library's error text, at most :data:`DETAIL_CHARS` characters.
    detail: str


class DeliveryFailed(KafkaIOError):
    """Records were not delivered: what they stand for must be produced again.

    ``rejected`` holds those of them that were refused for good (see :class:`RejectedRecord`);
    producing them again cannot help. The others failed for a reason of the broker or the
    network.
    """

    def __init__(self, message: str = "", *, rejected: Iterable[RejectedRecord] = ()) -> None:
        super().__init__(message)
        self.rejected: tuple[RejectedRecord, ...] = tuple(rejected)


class RecordsRejected(DeliveryFailed):
    """Every failed record was refused for good; nothing is wrong with the broker or the network.

    Raised by :meth:`KafkaClient.produce` for one record it refuses at once (it is not queued and
    the client stays usable), and by :meth:`KafkaClient.flush` and, in exactly-once mode,
    :meth:`KafkaClient.commit` when every failure was of the record itself.
    """


@dataclass(frozen=True, slots=True)
class Message:
    """One consumed record, with its coordinates."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach Kafka and which topics and group to use."""

    bootstrap_servers: str
    input_topic: str
    output_topic: str
    dead_letter_topic: str
    group_id: str
    exactly_once: bool = False
    client_id: str = "stream-lstm"
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 2_000
    max_poll_interval_ms: int = 300_000
    request_timeout_ms: int = 30_000
    max_partition_fetch_bytes: int = 1_048_576
    #: How long the broker may hold a fetch that finds nothing new. Apache Kafka answers as soon
    #: as records arrive; some brokers (the embedded one) wait the full time, which then bounds
    #: the latency of a consumer that keeps up.
    fetch_max_wait_ms: int = 100
    transactional_id: str | None = None
    #: Where a partition starts that the group has no offset for, neither checkpointed nor
    #: committed: ``"earliest"`` (its whole history) or ``"latest"`` (what is written from now on).
    start_from: str = "earliest"
    client: str = KAFKA_CLIENTS[0]
    #: TLS, SASL and other client properties, for every client (:mod:`stream_lstm.kafka.security`).
    security: KafkaSecurity = field(default=PLAINTEXT)

    def transactional_id_or_default(self) -> str:
        """The exactly-once transactional id: the one given, else one per group and host.

        One id per instance: a restarted instance fences its own zombie, and instances of one
        group do not fence each other.
        """
        return self.transactional_id or f"stream-lstm-{self.group_id}-{socket.gethostname()}"


class KafkaClient(Protocol):
    """A consumer in a group reading the input topic without auto-commit, and one producer.

    Built as ``Client(settings, on_assigned=..., on_revoked=..., on_lost=...)``; the callbacks
    are called from inside :meth:`poll` when the group gives partitions, takes them back, or
    takes them without a revocation (the session was lost: another member may own them already;
    clients that cannot tell revoke them instead). They may only seek there (no blocking broker
    calls).
    """

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        """Up to ``max_records`` messages (possibly none), in offset order within a partition."""
        ...

    def seek(self, partition: Partition, offset: int) -> None:
        """Make the next :meth:`poll` of ``partition`` start at ``offset``."""
        ...

    def seek_to_committed(self, partition: Partition) -> None:
        """Start at the group's committed offset, or without one where ``start_from`` says (blocks)."""
        ...

    def seek_to_beginning(self, partition: Partition) -> None:
        """Start ``partition`` at its first offset."""
        ...

    def assignment(self) -> list[Partition]:
        """The partitions this consumer owns now."""
        ...

    def committed(self, partition: Partition) -> int | None:
        """The group's committed (next) offset of ``partition``, or ``None`` (blocks)."""
        ...

    def lag(self) -> dict[Partition, int]:
        """Per owned partition: end offset minus this consumer's position."""
        ...

    def produce(self, topic: str, key: bytes | None, value: bytes, *, source: Source | None = None) -> None:
        """Queue a record (exactly-once: hold it for the next :meth:`commit`).

        ``source`` (the input it stands for) comes back in the :class:`RejectedRecord` if the
        record is refused for good. A record refused at once (over the producer's size limit;
        in exactly-once mode too) raises :class:`RecordsRejected` and is not queued; any other
        failure to queue raises :class:`DeliveryFailed`.
        """
        ...

    def flush(self, timeout_s: float) -> None:
        """Wait for every acknowledgement: :class:`DeliveryPending` while some are outstanding
        after ``timeout_s``; :class:`RecordsRejected` when every failed record was refused for
        good (the others are delivered); :class:`DeliveryFailed` for other failures."""
        ...

    def reset_producer(self) -> None:
        """Replace the producer, dropping unacknowledged records."""
        ...

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit next offsets of owned partitions (exactly-once: in the transaction).

        A :class:`KafkaIOError` leaves the transaction to :meth:`abort`; it is a
        :class:`DeliveryFailed` (or :class:`RecordsRejected`) carrying the held records that
        were refused for good, when there were any.
        """
        ...

    def abort(self) -> None:
        """Exactly-once: drop held records and abort an open transaction."""
        ...

    def connected(self) -> bool:
        """Whether a broker of the cluster is reachable."""
        ...

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the producer and the consumer (leaving the group at once)."""
        ...
