"""The Kafka client on kafka-python, the default (pure Python: nothing to compile, slower).

Implements :class:`stream_lstm.kafka.interface.KafkaClient`; the only module that imports kafka-python.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka import errors as kafka_errors
from kafka.errors import KafkaError
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.structs import OffsetAndMetadata, TopicPartition

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
    rejected_record,
)

log = logging.getLogger(__name__)

#: Errors that refuse a record for good, by the code of :class:`RejectedRecord` they become.
#: kafka-python splits a batch the broker finds too large until the record stands alone, so a
#: size error always names the culprit. (CORRUPT_MESSAGE is a CRC failure of a batch, which
#: Java retries; INVALID_TIMESTAMP means this host's clock is off, the records carry it.)
_REJECTIONS: dict[type[BaseException], str] = {
    kafka_errors.MessageSizeTooLargeError: RECORD_TOO_LARGE,
    kafka_errors.RecordListTooLargeError: RECORD_TOO_LARGE,
    kafka_errors.InvalidRecordError: INVALID_RECORD,
}

#: How long finding the culprits among records a broker refused together in a transaction may
#: take, in seconds (each try is a transaction of its own, aborted).
_ISOLATION_BUDGET_S = 2 * BLOCKING_TIMEOUT_MS / 1000

#: (topic, key, value, source): a record held for the transaction.
_Record = tuple[str, bytes | None, bytes, Source | None]


def _rejection(error: BaseException | None) -> str | None:
    """The :class:`RejectedRecord` code of a delivery error that refuses the record for good."""
    return _REJECTIONS.get(type(error)) if error is not None else None


def _innocent(error: BaseException) -> bool:
    """Whether a record failed only because another record of its batch was invalid (KIP-467):
    kafka-python gives those a bare KafkaError with this text; sent again, they go through.
    (Outside a transaction that is left to the service's rollback, which sends them again.)"""
    return type(error) is KafkaError and "part of a batch which had" in str(error)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(
        self, on_assigned: Callable[[list[Partition]], None], on_revoked: Callable[[list[Partition]], None]
    ):
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._on_revoked(sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._on_assigned(sorted((tp.topic, tp.partition) for tp in assigned))


class KafkaPythonIO:
    """A consumer in a group, reading the input topic without auto-commit, and one producer.

    Parameters
    ----------
    settings
        Where and what to read and write.
    on_assigned, on_revoked
        Called (from inside :meth:`poll`) when the group gives or takes partitions.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        on_assigned: Callable[[list[Partition]], None],
        on_revoked: Callable[[list[Partition]], None],
        on_lost: Callable[[list[Partition]], None] | None = None,  # kafka-python revokes instead
    ) -> None:
        self.settings = settings
        common = {
            "bootstrap_servers": settings.bootstrap_servers.split(","),
            "client_id": settings.client_id,
            "request_timeout_ms": settings.request_timeout_ms,
            "reconnect_backoff_ms": 100,
            "reconnect_backoff_max_ms": 2_000,
            # Without a broker, fail fast and let the service's backoff retry (and hear SIGTERM).
            "bootstrap_timeout_ms": 5_000,
        }
        self.consumer = KafkaConsumer(
            group_id=settings.group_id,
            enable_auto_commit=False,  # offsets are committed only after predictions are acked
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            **common,
        )
        self._producer_config: dict[str, Any] = {
            "acks": "all",
            "linger_ms": 5,
            "max_block_ms": 5_000,
            "retries": 2**31 - 1,
            "retry_backoff_ms": 100,
            # Idempotence only with transactions: at-least-once tolerates duplicates, and an
            # idempotent producer can get stuck in a fatal state when a broker loses its state.
            "enable_idempotence": settings.exactly_once,
            **common,
        }
        if settings.exactly_once:
            self._producer_config["transactional_id"] = settings.transactional_id_or_default()
        try:
            self.producer = self._new_producer()
        except Exception:
            self.consumer.close(autocommit=False)
            raise
        # (future, topic, source) of each record sent since the last flush. No key or value:
        # kafka-python names the failed record itself, so nothing is ever sent again from here.
        self._pending: list[tuple[Any, str, Source | None]] = []
        self._held: list[_Record] = []  # exactly-once: the records of the open interval
        self._max_request_size: int = self.producer.config["max_request_size"]
        self._in_transaction = False
        self.consumer.subscribe([settings.input_topic], listener=_Rebalance(on_assigned, on_revoked))

    # ------------------------------------------------------------------ consuming

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        """Up to ``max_records`` messages (possibly none), in offset order within a partition."""
        batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        messages = []
        for records in batches.values():
            for record in records:
                messages.append(
                    Message(
                        record.topic,
                        record.partition,
                        record.offset,
                        record.key,
                        record.value,
                        record.timestamp,
                    )
                )
        return messages

    def seek(self, partition: Partition, offset: int) -> None:
        """Make the next :meth:`poll` of ``partition`` start at ``offset``."""
        self.consumer.seek(TopicPartition(*partition), offset)

    def seek_to_committed(self, partition: Partition) -> None:
        """Start ``partition`` at the group's committed offset, or at its beginning without one."""
        committed = self.committed(partition)
        if committed is not None:
            self.seek(partition, committed)
        else:
            self.consumer.seek_to_beginning(TopicPartition(*partition))

    def seek_to_beginning(self, partition: Partition) -> None:
        """Start ``partition`` at its first offset."""
        self.consumer.seek_to_beginning(TopicPartition(*partition))

    def assignment(self) -> list[Partition]:
        """The partitions this consumer owns now."""
        return sorted((tp.topic, tp.partition) for tp in self.consumer.assignment())

    def committed(self, partition: Partition) -> int | None:
        """The group's committed (next) offset of ``partition``, or ``None``."""
        return self.consumer.committed(TopicPartition(*partition), timeout_ms=BLOCKING_TIMEOUT_MS)

    def lag(self) -> dict[Partition, int]:
        """Per owned partition: end offset minus this consumer's position (what is left to read)."""
        partitions = list(self.consumer.assignment())
        if not partitions:
            return {}
        ends = self.consumer.end_offsets(partitions, timeout_ms=BLOCKING_TIMEOUT_MS)
        lag = {}
        for tp in partitions:
            position = self.consumer.position(tp, timeout_ms=1_000)
            if position is not None and tp in ends:
                lag[(tp.topic, tp.partition)] = max(ends[tp] - position, 0)
        return lag

    # ------------------------------------------------------------------ producing

    def produce(self, topic: str, key: bytes | None, value: bytes, *, source: Source | None = None) -> None:
        """Queue a record; :meth:`flush` waits until the broker has acknowledged it.

        In exactly-once mode records are held here and sent by :meth:`commit`, inside the
        transaction that also commits their offsets: a crash before the commit leaves nothing on
        the broker (which also spares read_committed readers of brokers that do not hide aborted
        records, as the embedded one does not). A record over ``max_request_size`` is refused
        here in both modes (:class:`RecordsRejected`), as kafka-python's ``send`` refuses it.
        """
        if self.settings.exactly_once:
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
            if size > self._max_request_size:
                raise self._refused_at_once(
                    topic, source, f"the record is {size} bytes when serialized, over max_request_size"
                )
            self._held.append((topic, key, value, source))
            return
        try:
            future = self.producer.send(topic, key=key, value=value)
        except kafka_errors.MessageSizeTooLargeError as error:
            raise self._refused_at_once(topic, source, error) from error
        except KafkaError as error:
            raise DeliveryFailed(f"cannot send to {topic}: {error}") from error
        self._pending.append((future, topic, source))

    @staticmethod
    def _refused_at_once(topic: str, source: Source | None, error: object) -> RecordsRejected:
        record = rejected_record(topic, source, RECORD_TOO_LARGE, error)
        return RecordsRejected(f"cannot send to {topic}: {record.detail}", rejected=[record])

    def flush(self, timeout_s: float) -> None:
        """Wait until the broker has acknowledged every record sent since the last flush.

        Raises :class:`DeliveryPending` when some are still in flight after ``timeout_s`` (call
        again later), :class:`RecordsRejected` when every failed record was refused for good
        (those still in flight stay tracked for the next flush), and :class:`DeliveryFailed`
        when some failed for another reason (carrying those refused for good). Each failed
        record is classified on its own: kafka-python splits a batch the broker finds too large
        and reports per-record errors, so nothing is sent again (a record failed only for another
        one's fault, KIP-467, is a failure of its own: the service's rollback sends it again).
        """
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaError as error:
            raise DeliveryPending(f"flush did not finish: {error}") from error
        pending = self._pending
        failed = [entry for entry in pending if entry[0].exception is not None]
        self._pending = [entry for entry in pending if not entry[0].is_done]
        if failed:
            raise self._delivery_failure(failed)
        if self._pending:
            raise DeliveryPending(f"{len(self._pending)} records not acknowledged within {timeout_s:.1f} s")

    @staticmethod
    def _delivery_failure(failed: list[tuple[Any, str, Source | None]]) -> DeliveryFailed:
        rejected: list[RejectedRecord] = []
        others: list[str] = []
        for future, topic, source in failed:
            error = future.exception
            code = _rejection(error)
            if code is not None:
                rejected.append(rejected_record(topic, source, code, error))
            else:
                others.append(f"{topic}: {error}")
        return delivery_failure(rejected, others)

    def _send_and_wait(self, group: Sequence[_Record], deadline: float) -> list[Refusal]:
        """Send ``group`` (in a trial transaction, see :meth:`_probe`) and wait for it: the
        refusals among it (see :func:`isolate_rejected`).

        Raises :class:`KafkaIOError` for any other failure, and when ``deadline`` passes. A
        record that failed only along with a refused one (of its batch, or of the transaction)
        counts as refused too: a suspect, to be sent in smaller groups. (In a failed transaction
        kafka-python fails the batches it had not sent with the refused one's error.)
        """
        refused: list[Refusal] = []
        sent = []
        for i, (topic, key, value, _) in enumerate(group):
            try:
                sent.append((i, self.producer.send(topic, key=key, value=value)))
            except kafka_errors.MessageSizeTooLargeError as error:
                refused.append((i, RECORD_TOO_LARGE, str(error)))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KafkaIOError(f"no time left to send {len(group)} records again")
        try:
            self.producer.flush(timeout=remaining)
        except KafkaError as error:
            raise KafkaIOError(f"sending {len(group)} records again did not finish: {error}") from error
        for i, future in sent:
            error = future.exception
            if error is None and future.is_done:
                continue
            code = _rejection(error)
            if code is not None:
                refused.append((i, code, str(error)))
            elif error is not None and (
                _innocent(error)
                or (self._in_transaction and isinstance(error, kafka_errors.TransactionAbortedError))
            ):
                refused.append((i, INVALID_RECORD, str(error)))  # failed with a culprit: a suspect still
            else:
                raise KafkaIOError(f"sending {len(group)} records again failed: {error or 'not finished'}")
        return refused

    def reset_producer(self) -> None:
        """Replace the producer (after a failure it may be stuck); unacknowledged records are dropped."""
        self._pending = []
        self._held = []
        self._in_transaction = False
        old = self.producer
        try:
            old.close(timeout=0)
        except Exception as error:  # close() gives up at its flush when records are in flight
            log.debug("closing the old producer: %s", error)
            sender = getattr(old, "_sender", None)  # so stop its network thread directly
            if sender is not None:
                sender.force_close()
        self.producer = self._new_producer()

    def _new_producer(self) -> KafkaProducer:
        producer = KafkaProducer(**self._producer_config)
        if self.settings.exactly_once:
            producer.init_transactions()
        return producer

    # ------------------------------------------------------------------ offsets

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit next offsets for the group; in exactly-once mode, commit the transaction with them.

        Exactly-once: a held record the producer or broker refuses for good makes this raise
        :class:`RecordsRejected` (or :class:`DeliveryFailed` when something else failed too)
        naming it; the transaction is left for :meth:`abort`.
        """
        owned = self.consumer.assignment()
        # Never commit for a partition another member owns now: that would rewind its offset.
        kafka_offsets = {
            tp: OffsetAndMetadata(o, "", -1)
            for p, o in offsets.items()
            if (tp := TopicPartition(*p)) in owned
        }
        try:
            if self.settings.exactly_once:
                self._commit_transaction(kafka_offsets)
            elif kafka_offsets:
                self.consumer.commit(kafka_offsets, timeout_ms=BLOCKING_TIMEOUT_MS)
        except KafkaError as error:
            raise KafkaIOError(f"commit failed: {error}") from error

    def _commit_transaction(self, kafka_offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.producer.begin_transaction()
        self._in_transaction = True
        sent = []
        refused = []
        for record in self._held:
            topic, key, value, source = record
            try:
                sent.append((self.producer.send(topic, key=key, value=value), record))
            except kafka_errors.MessageSizeTooLargeError as error:  # produce() checks the same
                refused.append(rejected_record(topic, source, RECORD_TOO_LARGE, error))
        if refused:
            raise delivery_failure(refused, [], what="held records were refused")
        try:
            if kafka_offsets:
                self.producer.send_offsets_to_transaction(kafka_offsets, self.consumer.group_metadata())
            self.producer.commit_transaction()
        except KafkaError as error:
            failure = self._transaction_failure(sent)
            if failure is None:
                raise
            raise failure from error
        self._in_transaction = False
        self._held = []

    def _transaction_failure(self, sent: list[tuple[Any, _Record]]) -> DeliveryFailed | None:
        """Why a transaction failed, when held records were refused for good; else ``None``."""
        try:  # let every batch of the failed transaction finish (the aborted ones fail at once)
            self.producer.flush(timeout=BLOCKING_TIMEOUT_MS / 1000)
        except KafkaError as error:
            log.debug("flushing a failed transaction: %s", error)
        suspects: list[_Record] = []
        errors: list[BaseException] = []
        others: list[str] = []
        for future, record in sent:
            error = future.exception
            if error is None:
                continue
            if _rejection(error) is not None:
                suspects.append(record)
                errors.append(error)
            elif not isinstance(error, kafka_errors.TransactionAbortedError):
                others.append(f"{record[0]}: {error}")
        if len(suspects) == 1:  # nothing else failed so: its own fault
            (topic, _, _, source), error = suspects[0], errors[0]
            code = _rejection(error)
            assert code is not None
            return delivery_failure([rejected_record(topic, source, code, error)], others)
        if not suspects or others:
            return None  # the broker or the network: roll back and try again
        # The batches aborted with the transaction carry the refused one's error: find the
        # records the broker refuses on their own, each try in a transaction of its own.
        return isolate_in_trial_transactions(
            suspects,
            abort=self._abort_failed_transaction,
            probe=self._probe,
            deadline=time.monotonic() + _ISOLATION_BUDGET_S,
            errors=(KafkaError, KafkaIOError),
        )

    def _abort_failed_transaction(self) -> None:
        self.producer.abort_transaction()
        self._in_transaction = False

    def _probe(self, group: Sequence[_Record], deadline: float) -> list[Refusal]:
        """The refusals among ``group``, sent in a transaction of its own that is then aborted."""
        try:
            self.producer.begin_transaction()
            self._in_transaction = True
            try:
                return self._send_and_wait(group, deadline)
            finally:
                self.producer.abort_transaction()
                self._in_transaction = False
        except KafkaError as error:
            raise KafkaIOError(f"a trial transaction failed: {error}") from error

    def abort(self) -> None:
        """Exactly-once mode: drop the held records and abort a transaction left open by a failure."""
        self._held = []
        if self.settings.exactly_once and self._in_transaction:
            try:
                self.producer.abort_transaction()
            finally:
                self._in_transaction = False

    # ------------------------------------------------------------------ health and shutdown

    def connected(self) -> bool:
        """Whether the consumer holds a live connection to at least one broker of the cluster."""
        try:
            # kafka-python has no public "is any broker reachable" call; its client knows.
            client = self.consumer._client
            return any(client.connected(broker.node_id) for broker in client.cluster.brokers())
        except Exception:  # a probe must never crash the loop
            return False

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the producer and the consumer (leaving the group at once)."""
        try:
            self.producer.close(timeout=timeout_s)
        finally:
            self.consumer.close(autocommit=False)


class KafkaPythonEventWriter:
    """Produces events as JSON messages keyed by their entity key (so each key keeps its order)."""

    def __init__(self, bootstrap_servers: str, topic: str, *, linger_ms: int = 20) -> None:
        self.topic = topic
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers.split(","),
            client_id="stream-lstm-producer",
            acks="all",
            linger_ms=linger_ms,
            max_block_ms=30_000,
        )

    def send(self, key: str, value: bytes) -> None:
        """Queue one message."""
        self.producer.send(self.topic, key=key.encode(), value=value)

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait for every message to be acknowledged, then close."""
        try:
            self.producer.flush(timeout=timeout_s)
        finally:
            self.producer.close(timeout=timeout_s)
