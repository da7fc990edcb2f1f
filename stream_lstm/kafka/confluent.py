"""The Kafka client on confluent-kafka (librdkafka), the optional fast one (``--kafka-client confluent``).

Same behaviour as :mod:`stream_lstm.kafka.kafka_python` behind the interface of
:mod:`stream_lstm.kafka.interface`. librdkafka does the network work on its own threads in C; the
consumer's rebalance callbacks and the producer's delivery reports run inside ``consume`` and
``poll``/``flush`` on the caller's thread.

Differences that matter here: a partition can only be positioned while librdkafka assigns it,
so seeks asked for inside the assignment callback become the start offsets handed to
``assign``; and every transactional call takes a timeout, so a broker outage during an
exactly-once commit cannot block a shutdown.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from stream_lstm.errors import ConfigError
from stream_lstm.kafka.interface import (
    BLOCKING_TIMEOUT_MS,
    INVALID_RECORD,
    RECORD_TOO_LARGE,
    DeliveryFailed,
    DeliveryPending,
    KafkaIOError,
    KafkaSettings,
    Message,
    Partition,
    RecordsRejected,
    Refusal,
    RejectedRecord,
    Source,
    delivery_failure,
    isolate_in_trial_transactions,
    isolate_rejected,
    rejected_record,
    rejected_records,
)

log = logging.getLogger(__name__)

_BLOCKING_TIMEOUT_S = BLOCKING_TIMEOUT_MS / 1000

#: Error codes that refuse a record for good, by the code of :class:`RejectedRecord` they
#: become. librdkafka raises MSG_SIZE_TOO_LARGE from ``produce`` for a record over
#: ``message.max.bytes``; the broker's own refusals arrive in delivery reports, for the whole
#: batch (librdkafka does not split it), so several of one partition are only suspects.
#: (INVALID_MSG, i.e. CORRUPT_MESSAGE, is a CRC failure of a batch, which Java retries;
#: INVALID_TIMESTAMP means this host's clock is off: the records carry it.)
_REJECTIONS = {
    KafkaError.MSG_SIZE_TOO_LARGE: RECORD_TOO_LARGE,
    KafkaError.RECORD_LIST_TOO_LARGE: RECORD_TOO_LARGE,
    KafkaError.INVALID_RECORD: INVALID_RECORD,
}

#: A record failed only because another of its batch was invalid (KIP-467): sent again, it goes.
_INNOCENT = KafkaError._INVALID_DIFFERENT_RECORD

#: Failures an aborted transaction gives the records it had not sent yet: not their fault.
_ABORTED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT, _INNOCENT})

#: librdkafka's limit on one record (``message.max.bytes``, its default) and what it adds to
#: key and value to check it (measured: a value of ``limit - 36 - len(key)`` bytes is the largest
#: ``produce`` accepts).
_MESSAGE_MAX_BYTES = 1_000_000
_RECORD_OVERHEAD = 36

#: How long finding the culprits among records a broker refused together may take, in seconds.
_ISOLATION_BUDGET_S = 2 * _BLOCKING_TIMEOUT_S

#: (topic, key, value, source): a record held for the transaction, or kept for sending again.
_Record = tuple[str, bytes | None, bytes, Source | None]


def _rejection(error: KafkaError | None) -> str | None:
    """The :class:`RejectedRecord` code of an error that refuses a record for good, else ``None``."""
    if error is None or error.fatal():
        return None
    return _REJECTIONS.get(error.code())


class ConfluentIO:
    """A consumer in a group, reading the input topic without auto-commit, and one producer.

    See :class:`stream_lstm.kafka.interface.KafkaClient` for the contract of every method.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        on_assigned: Callable[[list[Partition]], None],
        on_revoked: Callable[[list[Partition]], None],
        on_lost: Callable[[list[Partition]], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._on_lost = on_lost or on_revoked
        common: dict[str, Any] = {
            "bootstrap.servers": settings.bootstrap_servers,
            "client.id": settings.client_id,
            "socket.timeout.ms": settings.request_timeout_ms,
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 2_000,
            "error_cb": self._on_error,
            "logger": log,
        }
        self.consumer = _create(
            Consumer,
            {
                **common,
                "group.id": settings.group_id,
                "enable.auto.commit": False,  # offsets are committed only after predictions are acked
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": settings.heartbeat_interval_ms,
                # librdkafka refuses a poll interval shorter than the session timeout (kafka-python
                # accepts it): a poll interval that short can only mean "as short as possible".
                "max.poll.interval.ms": max(settings.max_poll_interval_ms, settings.session_timeout_ms),
                "max.partition.fetch.bytes": settings.max_partition_fetch_bytes,
                "fetch.wait.max.ms": settings.fetch_max_wait_ms,
                "enable.partition.eof": False,
            },
        )
        self._producer_config: dict[str, Any] = {
            **common,
            "acks": "all",
            "linger.ms": 5,
            "retry.backoff.ms": 100,
            # Keep records until they are delivered; the service's flush timeout decides when to
            # roll back. Idempotence only with transactions, as with kafka-python.
            # (Transactions need it within their own timeout, 60 s by default.)
            "message.timeout.ms": 60_000 if settings.exactly_once else 300_000,
            "enable.idempotence": settings.exactly_once,
        }
        if settings.exactly_once:
            self._producer_config["transactional.id"] = settings.transactional_id_or_default()
        # (source, error, message) of each failed delivery since the last flush.
        self._failures: list[tuple[Source | None, KafkaError, Any]] = []
        self._assigning: dict[Partition, int] | None = None  # start offsets while in on_assign
        self._held: list[_Record] = []  # exactly-once: the records of the open interval
        self._max_record_bytes = int(self._producer_config.get("message.max.bytes", _MESSAGE_MAX_BYTES))
        self._delivered_unsourced = partial(self._delivered, None)
        self._in_transaction = False
        try:
            self.producer = self._new_producer()
        except Exception:
            self.consumer.close()
            raise
        self.consumer.subscribe(
            [settings.input_topic],
            on_assign=self._assign,
            on_revoke=self._revoke,
            on_lost=self._lose,
        )

    # ------------------------------------------------------------------ callbacks

    def _on_error(self, error: KafkaError) -> None:
        log.debug("librdkafka: %s", error)

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        start: dict[Partition, int] = {}
        self._assigning = start
        try:
            self._on_assigned(sorted((tp.topic, tp.partition) for tp in partitions))
        finally:
            self._assigning = None
            # Assign even if the callback failed, with the start offsets it chose so far.
            consumer.assign(
                [
                    TopicPartition(tp.topic, tp.partition, start.get((tp.topic, tp.partition), tp.offset))
                    for tp in partitions
                ]
            )

    def _revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._on_revoked(sorted((tp.topic, tp.partition) for tp in partitions))
        finally:
            consumer.unassign()

    def _lose(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._on_lost(sorted((tp.topic, tp.partition) for tp in partitions))
        finally:
            consumer.unassign()

    # ------------------------------------------------------------------ consuming

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        """Up to ``max_records`` messages (possibly none), in offset order within a partition."""
        try:
            records = self.consumer.consume(num_messages=max_records, timeout=timeout_s)
        except KafkaException as error:
            raise KafkaIOError(f"poll failed: {error}") from error
        messages = []
        for record in records:
            error = record.error()
            if error is not None:
                if error.fatal():
                    raise KafkaIOError(f"consumer failed: {error}")
                log.debug("consumer: %s", error)
                continue
            _, timestamp = record.timestamp()
            messages.append(
                Message(
                    record.topic(),
                    record.partition(),
                    record.offset(),
                    record.key(),
                    record.value(),
                    timestamp if timestamp >= 0 else None,
                )
            )
        return messages

    def seek(self, partition: Partition, offset: int) -> None:
        """Make the next :meth:`poll` of ``partition`` start at ``offset``."""
        if self._assigning is not None:
            self._assigning[partition] = offset
            return
        try:
            self.consumer.seek(TopicPartition(partition[0], partition[1], offset))
        except KafkaException as error:
            raise KafkaIOError(f"cannot seek {partition}: {error}") from error

    def seek_to_committed(self, partition: Partition) -> None:
        """Start ``partition`` at the group's committed offset, or at its beginning without one."""
        committed = self.committed(partition)
        self.seek(partition, committed if committed is not None else OFFSET_BEGINNING)

    def seek_to_beginning(self, partition: Partition) -> None:
        """Start ``partition`` at its first offset."""
        self.seek(partition, OFFSET_BEGINNING)

    def assignment(self) -> list[Partition]:
        """The partitions this consumer owns now."""
        return sorted((tp.topic, tp.partition) for tp in self.consumer.assignment())

    def committed(self, partition: Partition) -> int | None:
        """The group's committed (next) offset of ``partition``, or ``None``."""
        try:
            [found] = self.consumer.committed([TopicPartition(*partition)], timeout=_BLOCKING_TIMEOUT_S)
        except KafkaException as error:
            raise KafkaIOError(f"cannot read the committed offset of {partition}: {error}") from error
        if found.error is not None:
            raise KafkaIOError(f"cannot read the committed offset of {partition}: {found.error}")
        return found.offset if found.offset >= 0 else None

    def lag(self) -> dict[Partition, int]:
        """Per owned partition: end offset minus this consumer's position (what is left to read)."""
        owned = self.consumer.assignment()
        if not owned:
            return {}
        lag = {}
        for tp in self.consumer.position(owned):
            if tp.offset == OFFSET_INVALID or tp.offset < 0:
                continue
            # The cached high watermark comes with every fetch: no request, no blocking.
            watermarks = self.consumer.get_watermark_offsets(tp, cached=True)
            if watermarks is not None and watermarks[1] >= 0:
                lag[(tp.topic, tp.partition)] = max(watermarks[1] - tp.offset, 0)
        return lag

    # ------------------------------------------------------------------ producing

    def produce(self, topic: str, key: bytes | None, value: bytes, *, source: Source | None = None) -> None:
        """Queue a record; :meth:`flush` waits until the broker has acknowledged it.

        In exactly-once mode records are held and sent by :meth:`commit`, inside the transaction
        that also commits their offsets (see the kafka-python client for why). A record over
        ``message.max.bytes`` is refused here in both modes (:class:`RecordsRejected`), as
        librdkafka's ``produce`` refuses it.
        """
        if self.settings.exactly_once:
            size = len(value) + (len(key) if key is not None else 0) + _RECORD_OVERHEAD
            if size > self._max_record_bytes:
                rejected = rejected_record(
                    topic, source, RECORD_TOO_LARGE, f"the record is {size} bytes, over message.max.bytes"
                )
                raise RecordsRejected(f"cannot send to {topic}: {rejected.detail}", rejected=[rejected])
            self._held.append((topic, key, value, source))
            return
        self._send(topic, key, value, source)

    def _send(self, topic: str, key: bytes | None, value: bytes, source: Source | None) -> None:
        report = self._delivered_unsourced if source is None else partial(self._delivered, source)
        try:
            _produce(self.producer, topic, key, value, report)
        except KafkaException as error:
            kafka_error = error.args[0] if error.args else None
            code = _rejection(kafka_error) if isinstance(kafka_error, KafkaError) else None
            if code is None:
                raise DeliveryFailed(f"cannot send to {topic}: {error}") from error
            rejected = rejected_record(topic, source, code, kafka_error.str())
            raise RecordsRejected(
                f"cannot send to {topic}: {rejected.detail}", rejected=[rejected]
            ) from error

    def _delivered(self, source: Source | None, error: KafkaError | None, message: Any) -> None:
        if error is not None:
            self._failures.append((source, error, message))

    def flush(self, timeout_s: float) -> None:
        """Wait until the broker has acknowledged every record sent since the last flush.

        Raises :class:`DeliveryPending` when some are still in flight after ``timeout_s`` (call
        again later), :class:`RecordsRejected` when every failed record was refused for good
        (the others are delivered), and :class:`DeliveryFailed` when some failed for another
        reason.
        """
        deadline = time.monotonic() + timeout_s
        remaining = self.producer.flush(timeout_s)
        if self._failures:
            failures, self._failures = self._failures, []
            failure = self._delivery_failure(failures, deadline, settled=not remaining)
            if failure is not None:
                raise failure
        if remaining:
            raise DeliveryPending(f"{remaining} records not acknowledged within {timeout_s:.1f} s")

    def _delivery_failure(
        self, failures: list[tuple[Source | None, KafkaError, Any]], deadline: float, *, settled: bool
    ) -> DeliveryFailed | None:
        # The broker refuses a batch as a whole: one refused record of a partition is the
        # culprit, several are suspects, sent again until each culprit stands alone (which
        # delivers the innocent ones; ``settled``: nothing else is in flight meanwhile).
        # ``None`` when every suspect went through when sent again: all delivered.
        refused_in = Counter(
            (message.topic(), message.partition()) for _, error, message in failures if _rejection(error)
        )
        rejected: list[RejectedRecord] = []
        others: list[str] = []
        suspects: list[_Record] = []
        for source, error, message in failures:
            code = _rejection(error)
            if code is not None and refused_in[(message.topic(), message.partition())] == 1:
                rejected.append(rejected_record(message.topic(), source, code, error.str()))
            elif code is not None or error.code() == _INNOCENT:
                suspects.append((message.topic(), message.key(), message.value(), source))
            else:
                others.append(f"{message.topic()}: {error.str()}")
        if suspects and settled and not others:
            found: list[Refusal] = []  # kept when the search fails part-way: progress for the next try
            try:
                isolate_rejected(suspects, lambda group: self._send_and_wait(group, deadline), found)
            except KafkaIOError as error:
                others.append(str(error))
            rejected.extend(rejected_records(suspects, found))
        elif suspects:
            others.extend(f"{record[0]}: refused with the rest of its batch" for record in suspects)
        if not rejected and not others:
            return None
        return delivery_failure(rejected, others)

    def _send_and_wait(self, group: Sequence[_Record], deadline: float) -> list[Refusal]:
        """Send ``group`` and wait for it: the refusals among it (see :func:`isolate_rejected`).

        Raises :class:`KafkaIOError` for any other failure, and when ``deadline`` passes. A
        record that failed only along with a refused one (of its batch, or of a transaction that
        failed before sending it) counts as refused too: a suspect, to be sent in smaller groups.
        """
        if time.monotonic() >= deadline:
            raise KafkaIOError(f"no time left to send {len(group)} records again")
        reports: dict[int, KafkaError | None] = {}
        refused: list[Refusal] = []
        for i, (topic, key, value, _) in enumerate(group):
            try:
                _produce(self.producer, topic, key, value, partial(_report, reports, i))
            except KafkaException as error:
                kafka_error = error.args[0] if error.args else None
                code = _rejection(kafka_error) if isinstance(kafka_error, KafkaError) else None
                if code is None:
                    raise KafkaIOError(f"sending {len(group)} records again failed: {error}") from error
                reports[i] = kafka_error
        # Stop waiting at the first refusal in a transaction: it fails the rest, at its abort.
        in_transaction = self._in_transaction
        while len(reports) < len(group) and time.monotonic() < deadline:
            self.producer.flush(min(0.2, max(deadline - time.monotonic(), 0.0)))
            if in_transaction and any(_rejection(error) for error in reports.values()):
                break
        any_refused = any(_rejection(error) for error in reports.values())
        if in_transaction:
            self.producer.abort_transaction(max(min(deadline - time.monotonic(), _BLOCKING_TIMEOUT_S), 0.1))
            self._in_transaction = False
            self.producer.poll(0)
        if len(reports) < len(group) and not (in_transaction and any_refused):
            raise KafkaIOError(f"sending {len(group)} records again did not finish in time")
        for i in range(len(group)):
            error = reports.get(i)
            if error is None:
                if i in reports:
                    continue  # delivered (in a transaction: would have been)
                error = KafkaError(KafkaError._PURGE_QUEUE, "not sent before the transaction failed")
            code = _rejection(error)
            if code is not None:
                refused.append((i, code, error.str()))
            elif error.code() == _INNOCENT or (in_transaction and error.code() in _ABORTED):
                refused.append((i, INVALID_RECORD, error.str()))  # failed with a culprit: a suspect still
            else:
                raise KafkaIOError(f"sending {len(group)} records again failed: {error.str()}")
        return refused

    def reset_producer(self) -> None:
        """Replace the producer (after a failure it may be stuck); unacknowledged records are dropped."""
        self._held = []
        self._in_transaction = False
        try:
            self.producer.purge()
            self.producer.flush(0)
        except Exception as error:
            log.debug("dropping the old producer: %s", error)
        # After the purge: its "purged" delivery reports are not failures of the new producer.
        self._failures = []
        self.producer = self._new_producer()

    def _new_producer(self) -> Producer:
        producer = _create(Producer, self._producer_config)
        if self.settings.exactly_once:
            try:
                producer.init_transactions(_BLOCKING_TIMEOUT_S * 2)  # within a SIGTERM's 10 s
            except KafkaException as error:
                raise KafkaIOError(f"cannot initialise transactions: {error}") from error
        return producer

    # ------------------------------------------------------------------ offsets

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit next offsets for the group; in exactly-once mode, commit the transaction with them."""
        owned = set(self.assignment())
        # Never commit for a partition another member owns now: that would rewind its offset.
        kafka_offsets = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in owned]
        try:
            if self.settings.exactly_once:
                self._commit_transaction(kafka_offsets)
            elif kafka_offsets:
                results = self.consumer.commit(offsets=kafka_offsets, asynchronous=False) or []
                failed = [tp for tp in results if tp.error is not None]
                if failed:
                    raise KafkaIOError(f"commit failed for {len(failed)} partitions: {failed[0].error}")
        except KafkaException as error:
            raise KafkaIOError(f"commit failed: {error}") from error

    def _commit_transaction(self, kafka_offsets: list[TopicPartition]) -> None:
        self.producer.begin_transaction()
        self._in_transaction = True
        self._failures = []  # what follows is this transaction's
        refused: list[RejectedRecord] = []
        for topic, key, value, source in self._held:
            try:
                self._send(topic, key, value, source)
            except RecordsRejected as rejection:  # produce() checks the same, before
                refused.extend(rejection.rejected)
        if refused:
            raise delivery_failure(refused, [], what="held records were refused")
        # No longer than the two calls took before they were retried.
        deadline = time.monotonic() + 3 * _BLOCKING_TIMEOUT_S
        try:
            if kafka_offsets:
                metadata = self.consumer.consumer_group_metadata()
                retry_retriable(
                    lambda timeout: self.producer.send_offsets_to_transaction(
                        kafka_offsets, metadata, timeout
                    ),
                    "sending the offsets to the transaction",
                    timeout_s=_BLOCKING_TIMEOUT_S,
                    deadline=deadline,
                )
            retry_retriable(
                self.producer.commit_transaction,
                "committing the transaction",
                timeout_s=2 * _BLOCKING_TIMEOUT_S,
                deadline=deadline,
            )
        except KafkaException as error:
            failure = self._transaction_failure()
            if failure is None:
                raise
            raise failure from error
        self._in_transaction = False
        self._held = []

    def _transaction_failure(self) -> DeliveryFailed | None:
        """Why a transaction failed, when held records were refused for good; else ``None``."""
        self.producer.poll(0)  # commit_transaction served the delivery reports; any late ones
        failures, self._failures = self._failures, []
        suspects: list[_Record] = []
        errors: list[KafkaError] = []
        others: list[str] = []
        for source, error, message in failures:
            if _rejection(error) is not None:
                suspects.append((message.topic(), message.key(), message.value(), source))
                errors.append(error)
            elif error.code() not in _ABORTED:
                others.append(f"{message.topic()}: {error.str()}")
        if len(suspects) == 1:  # nothing else was refused: a batch of its own
            code = _rejection(errors[0])
            assert code is not None
            return delivery_failure(
                [rejected_record(suspects[0][0], suspects[0][3], code, errors[0].str())], others
            )
        if not suspects or others:
            return None  # the broker or the network: roll back and try again
        # The broker refused whole batches: find the records it refuses on their own, each try
        # in a transaction of its own, aborted (invisible to read_committed readers).
        return isolate_in_trial_transactions(
            suspects,
            abort=self._abort_failed_transaction,
            probe=self._probe,
            deadline=time.monotonic() + _ISOLATION_BUDGET_S,
            errors=(KafkaException, KafkaIOError),
        )

    def _abort_failed_transaction(self) -> None:
        self.producer.abort_transaction(_BLOCKING_TIMEOUT_S)
        self._in_transaction = False

    def _probe(self, group: Sequence[_Record], deadline: float) -> list[Refusal]:
        """The refusals among ``group``, sent in a transaction of its own that is then aborted."""
        try:
            self.producer.begin_transaction()
            self._in_transaction = True
            return self._send_and_wait(group, deadline)
        except KafkaException as error:
            raise KafkaIOError(f"a trial transaction failed: {error}") from error

    def abort(self) -> None:
        """Exactly-once mode: drop the held records and abort a transaction left open by a failure."""
        self._held = []
        if self.settings.exactly_once and self._in_transaction:
            try:
                self.producer.abort_transaction(_BLOCKING_TIMEOUT_S)
            finally:
                self._in_transaction = False

    # ------------------------------------------------------------------ health and shutdown

    def connected(self) -> bool:
        """Whether a broker of the cluster answers a metadata request (within half a second)."""
        try:
            self.consumer.list_topics(self.settings.input_topic, timeout=0.5)
        except KafkaException:
            return False
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the producer and the consumer (leaving the group at once)."""
        try:
            self.producer.flush(timeout_s)
        finally:
            self.consumer.close()


def retry_retriable(
    call: Callable[[float], Any], what: str, *, timeout_s: float, deadline: float, attempts: int = 3
) -> Any:
    """Run a transactional call, again while librdkafka says its error is retriable (a timeout,
    say), as its documentation asks. ``call`` gets the seconds it may block: ``timeout_s``, or
    less as ``deadline`` (``time.monotonic()``) nears, so retries never make the whole longer.
    An error that requires an abort, a fatal one, or the last possible attempt's is raised."""
    for attempt in range(1, attempts + 1):
        remaining = deadline - time.monotonic()
        try:
            return call(max(min(timeout_s, remaining), 0.1))
        except KafkaException as error:
            kafka_error = error.args[0] if error.args else None
            retriable = isinstance(kafka_error, KafkaError) and kafka_error.retriable()
            out_of_time = deadline - time.monotonic() < 0.5
            if not retriable or kafka_error.txn_requires_abort() or attempt == attempts or out_of_time:
                raise
            log.warning("%s: %s; trying again (%d of %d)", what, kafka_error, attempt + 1, attempts)
    raise AssertionError("unreachable")


def _report(
    reports: dict[int, KafkaError | None], index: int, error: KafkaError | None, _message: Any
) -> None:
    reports[index] = error


def _produce(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes,
    on_delivery: Callable[[KafkaError | None, Any], None],
) -> None:
    """Queue one record, waiting while librdkafka's local queue is full."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            return
        except BufferError:  # the local queue is full: serve delivery reports, then retry
            producer.poll(0.05)


def _create(kind: Callable[[dict[str, Any]], Any], config: dict[str, Any]) -> Any:
    """A librdkafka client; a configuration it refuses is a :class:`ConfigError`, not an outage."""
    try:
        return kind(config)
    except KafkaException as error:
        raise ConfigError(f"confluent-kafka refused the configuration: {error.args[0].str()}") from None


class ConfluentEventWriter:
    """Produces events as JSON messages keyed by their entity key (so each key keeps its order)."""

    def __init__(self, bootstrap_servers: str, topic: str, *, linger_ms: int = 20) -> None:
        self.topic = topic
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                "client.id": "stream-lstm-producer",
                "acks": "all",
                "linger.ms": linger_ms,
                "logger": log,
            }
        )
        self._failures: list[str] = []

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._failures.append(str(error))

    def send(self, key: str, value: bytes) -> None:
        """Queue one message."""
        _produce(self.producer, self.topic, key.encode(), value, self._delivered)
        self.producer.poll(0)

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait for every message to be acknowledged."""
        remaining = self.producer.flush(timeout_s)
        if remaining or self._failures:
            raise KafkaIOError(
                f"{remaining + len(self._failures)} messages were not delivered"
                + (f": {self._failures[0]}" if self._failures else "")
            )
