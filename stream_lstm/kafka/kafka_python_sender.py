"""The sending half of the kafka-python client: produce, flush, and the exactly-once transaction.

:class:`KafkaPythonSender` owns the producer of a
:class:`~stream_lstm.kafka.kafka_python.KafkaPythonIO`. kafka-python splits a batch the broker
finds too large until the record stands alone and reports errors per record, so outside a
transaction nothing is ever sent again from here; a failed transaction fails the batches sent with
it, and the records at fault are then found in trial transactions (see
:func:`~stream_lstm.kafka.delivery.isolate_in_trial_transactions`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaProducer
from kafka import errors as kafka_errors
from kafka.errors import KafkaError
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.structs import OffsetAndMetadata, TopicPartition

from stream_lstm.kafka.delivery import (
    HeldRecord,
    Refusal,
    delivery_failure,
    rejected_record,
    transaction_failure,
)
from stream_lstm.kafka.interface import (
    BLOCKING_TIMEOUT_MS,
    INVALID_RECORD,
    RECORD_TOO_LARGE,
    DeliveryFailed,
    DeliveryPending,
    KafkaIOError,
    KafkaSettings,
    RecordsRejected,
    RejectedRecord,
    Source,
)

log = logging.getLogger(__name__)

#: The producer's keywords (taken before a test may replace the class): which options it takes.
_PRODUCER_KEYWORDS = frozenset(KafkaProducer.DEFAULT_CONFIG)

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


def _rejection(error: BaseException | None) -> str | None:
    """The :class:`RejectedRecord` code of a delivery error that refuses the record for good."""
    return _REJECTIONS.get(type(error)) if error is not None else None


def _innocent(error: BaseException) -> bool:
    """Whether a record failed only because another record of its batch was invalid (KIP-467):
    kafka-python gives those a bare KafkaError with this text; sent again, they go through.
    (Outside a transaction that is left to the service's rollback, which sends them again.)"""
    return type(error) is KafkaError and "part of a batch which had" in str(error)


class KafkaPythonSender:
    """The producer of the kafka-python client, and what it holds for the next transaction.

    ``common`` is the configuration shared with the consumer (servers, timeouts). The methods
    carry out :meth:`~stream_lstm.kafka.interface.KafkaClient.produce`, ``flush``,
    ``reset_producer`` and ``abort``, and the transactional half of ``commit``.
    """

    def __init__(self, settings: KafkaSettings, common: dict[str, Any]) -> None:
        self.settings = settings
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
            **settings.security.kafka_python_config(_PRODUCER_KEYWORDS),
        }
        if settings.exactly_once:
            self._producer_config["transactional_id"] = settings.transactional_id_or_default()
        self.producer = self._new_producer()
        # (future, topic, source) of each record sent since the last flush. No key or value:
        # kafka-python names the failed record itself, so nothing is ever sent again from here.
        self._pending: list[tuple[Any, str, Source | None]] = []
        self._held: list[HeldRecord] = []  # exactly-once: the records of the open interval
        self._max_request_size: int = self.producer.config["max_request_size"]
        self._in_transaction = False

    # ------------------------------------------------------------------ producing

    def produce(self, topic: str, key: bytes | None, value: bytes, *, source: Source | None = None) -> None:
        """Queue a record; :meth:`flush` waits until the broker has acknowledged it.

        In exactly-once mode records are held here and sent by :meth:`commit_transaction`, inside
        the transaction that also commits their offsets: a crash before the commit leaves nothing
        on the broker (which also spares read_committed readers of brokers that do not hide
        aborted records, as the embedded one does not). A record over ``max_request_size`` is
        refused here in both modes (:class:`RecordsRejected`), as kafka-python's ``send`` refuses
        it.
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

    def _send_and_wait(self, group: Sequence[HeldRecord], deadline: float) -> list[Refusal]:
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

    def reset(self) -> None:
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

    # ------------------------------------------------------------------ exactly-once

    def commit_transaction(
        self, kafka_offsets: dict[TopicPartition, OffsetAndMetadata], group_metadata: Callable[[], Any]
    ) -> None:
        """Send the held records and ``kafka_offsets`` in one transaction, and commit it.

        ``group_metadata`` gives the consumer's group metadata, asked for only when there are
        offsets to send. A held record the producer or broker refuses for good makes this raise
        :class:`RecordsRejected` (or :class:`DeliveryFailed` when something else failed too)
        naming it; other library errors are raised as they come (the caller makes them a
        :class:`KafkaIOError`). The transaction is left for :meth:`abort`.
        """
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
                self.producer.send_offsets_to_transaction(kafka_offsets, group_metadata())
            self.producer.commit_transaction()
        except KafkaError as error:
            failure = self._transaction_failure(sent)
            if failure is None:
                raise
            raise failure from error
        self._in_transaction = False
        self._held = []

    def _transaction_failure(self, sent: list[tuple[Any, HeldRecord]]) -> DeliveryFailed | None:
        """Why a transaction failed, when held records were refused for good; else ``None``."""
        try:  # let every batch of the failed transaction finish (the aborted ones fail at once)
            self.producer.flush(timeout=BLOCKING_TIMEOUT_MS / 1000)
        except KafkaError as error:
            log.debug("flushing a failed transaction: %s", error)
        refused: list[tuple[HeldRecord, str, str]] = []
        others: list[str] = []
        for future, record in sent:
            error = future.exception
            if error is None:
                continue
            code = _rejection(error)
            if code is not None:
                refused.append((record, code, str(error)))
            elif not isinstance(error, kafka_errors.TransactionAbortedError):
                others.append(f"{record[0]}: {error}")
        # Several refused: the batches aborted with the transaction carry the refused one's
        # error. Each try of the search is a transaction of its own.
        return transaction_failure(
            refused,
            others,
            abort=self._abort_failed_transaction,
            probe=self._probe,
            deadline=time.monotonic() + _ISOLATION_BUDGET_S,
            errors=(KafkaError, KafkaIOError),
        )

    def _abort_failed_transaction(self) -> None:
        self.producer.abort_transaction()
        self._in_transaction = False

    def _probe(self, group: Sequence[HeldRecord], deadline: float) -> list[Refusal]:
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
