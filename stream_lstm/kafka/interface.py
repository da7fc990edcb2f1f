"""The service's view of Kafka: plain records and partitions, and one small client interface.

Two clients implement :class:`KafkaClient`: kafka-python (the default, pure Python,
:mod:`stream_lstm.kafka.kafka_python`) and confluent-kafka (librdkafka, an optional extra that
is several times faster, :mod:`stream_lstm.kafka.confluent`); ``--kafka-client`` picks one. The
service never touches a client library. Offsets follow Kafka's convention throughout: the offset
stored or committed for a partition is the NEXT offset to read, i.e. the last processed offset
plus one.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from stream_lstm.errors import StreamLSTMError

#: How long a blocking consumer call (committed offsets, commits) may wait for the broker.
BLOCKING_TIMEOUT_MS = 5_000

#: The client libraries ``--kafka-client`` accepts; the first is the default.
log = logging.getLogger(__name__)

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


def rejected_record(topic: str, source: Source | None, code: str, error: object) -> RejectedRecord:
    """A :class:`RejectedRecord` whose detail is ``error``'s text, cut to :data:`DETAIL_CHARS`."""
    detail = str(error)
    if len(detail) > DETAIL_CHARS:
        detail = detail[: DETAIL_CHARS - 3] + "..."
    return RejectedRecord(topic, source, code, detail)


def delivery_failure(
    rejected: Sequence[RejectedRecord], others: Sequence[str], *, what: str = "records were not delivered"
) -> DeliveryFailed:
    """The error for failed deliveries: :class:`RecordsRejected` when every one was refused for
    good (``others``, the texts of the remaining failures, is empty), else :class:`DeliveryFailed`
    carrying the refused ones. There must be a failure to report: with none, everything was
    delivered, and the caller must not raise at all."""
    if not rejected and not others:
        raise ValueError("delivery_failure needs a failure: none means everything was delivered")
    if not others:
        first = rejected[0]
        return RecordsRejected(
            f"{len(rejected)} {what}, refused for good: {first.code} ({first.detail})", rejected=rejected
        )
    message = f"{len(rejected) + len(others)} {what}: {others[0]}"
    if rejected:
        message += f" ({len(rejected)} of them refused for good: {rejected[0].code})"
    return DeliveryFailed(message, rejected=rejected)


_Record = TypeVar("_Record")

#: What a sender of records returns for each one refused for good: (its index in the group
#: sent, the :class:`RejectedRecord` code, the library's error text).
Refusal = tuple[int, str, str]


def isolate_rejected(
    records: Sequence[_Record],
    send: Callable[[Sequence[_Record]], Sequence[Refusal]],
    found: list[Refusal] | None = None,
) -> list[Refusal]:
    """Of records a broker refused together, the ones it refuses on their own (indexes into ``records``).

    A broker can refuse a whole batch for one bad record (librdkafka does not split a batch the
    broker found too large; a failed transaction fails the batches sent with it), and the
    others are innocent. ``send`` sends a group again, waits, and returns the refusals among
    it, raising on any other failure. A group refused together is halved until each refused
    record was refused while nothing else of its batch was: ``k`` bad records among ``n``
    cost about ``1 + 2 k log2(n)`` sends. Each culprit is appended to ``found`` (returned) as
    soon as it is known, so when ``send`` raises (out of time, say) the caller's ``found`` still
    holds the culprits found so far: report them, and the next try has fewer suspects.

    >>> sent = []
    >>> def send(group):  # a broker that refuses any batch holding a record over 9
    ...     sent.append(len(group))
    ...     return [(i, "record_too_large", "too big") for i in range(len(group))] if max(group) > 9 else []
    >>> isolate_rejected([1, 2, 30, 4, 5, 6], send), sent
    ([(2, 'record_too_large', 'too big')], [6, 3, 1, 2, 1, 1, 3])
    """

    culprits: list[Refusal] = [] if found is None else found

    def search(indexes: list[int]) -> None:
        refused = send([records[i] for i in indexes])
        if len(refused) <= 1:  # refused while nothing else of its batch was: its own fault
            culprits.extend((indexes[j], code, detail) for j, code, detail in refused)
            return
        failed = [indexes[j] for j, _, _ in refused]
        middle = len(failed) // 2
        search(failed[:middle])
        search(failed[middle:])

    search(list(range(len(records))))
    return culprits


#: An output record as the clients keep it to send again: (topic, key, value, source).
HeldRecord = tuple[str, bytes | None, bytes, "Source | None"]


def rejected_records(records: Sequence[HeldRecord], found: Sequence[Refusal]) -> list[RejectedRecord]:
    """The :class:`RejectedRecord` of each refusal ``found`` among ``records``."""
    return [rejected_record(records[i][0], records[i][3], code, detail) for i, code, detail in found]


def isolate_in_trial_transactions(
    suspects: Sequence[HeldRecord],
    *,
    abort: Callable[[], None],
    probe: Callable[[Sequence[HeldRecord], float], Sequence[Refusal]],
    deadline: float,
    errors: tuple[type[BaseException], ...],
) -> DeliveryFailed | None:
    """Exactly-once: which of a failed transaction's ``suspects`` the broker refuses on their own.

    ``abort`` ends the failed transaction; ``probe(group, deadline)`` sends a group in a trial
    transaction of its own, aborted (invisible to read_committed readers), and returns the
    refusals among it, by the ``deadline`` (the caller's clock). ``errors`` are the library's
    exceptions that end the search (out of time, a broken transaction): the culprits found by
    then are still reported, so the next try has fewer suspects. ``None`` when none was found
    (the caller's own error stands).
    """
    found: list[Refusal] = []
    try:
        abort()
        isolate_rejected(suspects, lambda group: probe(group, deadline), found)
    except errors as error:
        log.warning("cannot tell which of %d refused records are at fault: %s", len(suspects), error)
        return delivery_failure(rejected_records(suspects, found), [str(error)]) if found else None
    return delivery_failure(rejected_records(suspects, found), []) if found else None


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
    client: str = KAFKA_CLIENTS[0]

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
        """Start at the group's committed offset, or at the beginning without one (blocks)."""
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
