"""The sending half of the confluent client: produce, flush, and the exactly-once transaction.

:class:`ConfluentSender` owns the librdkafka producer of a
:class:`~stream_lstm.kafka.confluent.ConfluentIO`. librdkafka reports deliveries inside
``poll``/``flush``, on the caller's thread; it does not split a batch the broker refuses, so
every record of it gets the error and, when several of a partition fail, the records refused on
their own are found by sending them again in smaller groups (see
:func:`~stream_lstm.kafka.delivery.isolate_rejected`). Every transactional call takes a timeout,
so a broker outage during an exactly-once commit cannot block a shutdown.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from stream_lstm.kafka.confluent_library import (
    ABORTED,
    BLOCKING_TIMEOUT_S,
    INNOCENT,
    MESSAGE_MAX_BYTES,
    RECORD_OVERHEAD,
    create_client,
    produce_waiting,
    rejection,
    retry_retriable,
)
from stream_lstm.kafka.delivery import (
    HeldRecord,
    Refusal,
    delivery_failure,
    isolate_rejected,
    rejected_record,
    rejected_records,
    transaction_failure,
)
from stream_lstm.kafka.interface import (
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

#: How long finding the culprits among records a broker refused together may take, in seconds.
_ISOLATION_BUDGET_S = 2 * BLOCKING_TIMEOUT_S


class ConfluentSender:
    """The producer of the confluent client, and what it holds for the next transaction.

    ``common`` is the configuration shared with the consumer (servers, timeouts, callbacks).
    The methods carry out :meth:`~stream_lstm.kafka.interface.KafkaClient.produce`, ``flush``,
    ``reset_producer`` and ``abort``, and the transactional half of ``commit``.
    """

    def __init__(self, settings: KafkaSettings, common: dict[str, Any]) -> None:
        self.settings = settings
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
            **settings.security.confluent_config(),
        }
        if settings.exactly_once:
            self._producer_config["transactional.id"] = settings.transactional_id_or_default()
        # (source, error, message) of each failed delivery since the last flush.
        self._failures: list[tuple[Source | None, KafkaError, Any]] = []
        self._held: list[HeldRecord] = []  # exactly-once: the records of the open interval
        self._max_record_bytes = int(self._producer_config.get("message.max.bytes", MESSAGE_MAX_BYTES))
        self._delivered_unsourced = partial(self._delivered, None)
        self._in_transaction = False
        self._start_producer()

    # ------------------------------------------------------------------ producing

    def produce(self, topic: str, key: bytes | None, value: bytes, *, source: Source | None = None) -> None:
        """Queue a record; :meth:`flush` waits until the broker has acknowledged it.

        In exactly-once mode records are held and sent by :meth:`commit_transaction`, inside the
        transaction that also commits their offsets (see the kafka-python client for why). A
        record over ``message.max.bytes`` is refused here in both modes (:class:`RecordsRejected`),
        as librdkafka's ``produce`` refuses it.
        """
        if self.settings.exactly_once:
            size = len(value) + (len(key) if key is not None else 0) + RECORD_OVERHEAD
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
            produce_waiting(self.producer, topic, key, value, report)
        except KafkaException as error:
            kafka_error = error.args[0] if error.args else None
            code = rejection(kafka_error) if isinstance(kafka_error, KafkaError) else None
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
            (message.topic(), message.partition()) for _, error, message in failures if rejection(error)
        )
        rejected: list[RejectedRecord] = []
        others: list[str] = []
        suspects: list[HeldRecord] = []
        for source, error, message in failures:
            code = rejection(error)
            if code is not None and refused_in[(message.topic(), message.partition())] == 1:
                rejected.append(rejected_record(message.topic(), source, code, error.str()))
            elif code is not None or error.code() == INNOCENT:
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

    def _send_and_wait(self, group: Sequence[HeldRecord], deadline: float) -> list[Refusal]:
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
                produce_waiting(self.producer, topic, key, value, partial(_report, reports, i))
            except KafkaException as error:
                kafka_error = error.args[0] if error.args else None
                code = rejection(kafka_error) if isinstance(kafka_error, KafkaError) else None
                if code is None:
                    raise KafkaIOError(f"sending {len(group)} records again failed: {error}") from error
                reports[i] = kafka_error
        # Stop waiting at the first refusal in a transaction: it fails the rest, at its abort.
        in_transaction = self._in_transaction
        while len(reports) < len(group) and time.monotonic() < deadline:
            self.producer.flush(min(0.2, max(deadline - time.monotonic(), 0.0)))
            if in_transaction and any(rejection(error) for error in reports.values()):
                break
        any_refused = any(rejection(error) for error in reports.values())
        if in_transaction:
            self.producer.abort_transaction(max(min(deadline - time.monotonic(), BLOCKING_TIMEOUT_S), 0.1))
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
            code = rejection(error)
            if code is not None:
                refused.append((i, code, error.str()))
            elif error.code() == INNOCENT or (in_transaction and error.code() in ABORTED):
                refused.append((i, INVALID_RECORD, error.str()))  # failed with a culprit: a suspect still
            else:
                raise KafkaIOError(f"sending {len(group)} records again failed: {error.str()}")
        return refused

    def reset(self) -> None:
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
        self._start_producer()

    def _start_producer(self) -> None:
        """A new producer, in use from now on even if its transactions cannot be initialised yet
        (:meth:`_ensure_transactions` raises then, and the next transaction tries again)."""
        self.producer = create_client(Producer, self._producer_config)
        self._transactions_ready = False
        self._ensure_transactions()

    def _ensure_transactions(self) -> None:
        """Exactly-once: initialise the producer's transactions unless that has succeeded already.

        A reset while the broker is away fails here (:class:`KafkaIOError`), and the new producer
        stays, not yet initialised: the next transaction tries again (librdkafka resumes an init
        that timed out), rather than use the old producer, whose transaction was left open.
        """
        if not self.settings.exactly_once or self._transactions_ready:
            return
        try:
            self.producer.init_transactions(BLOCKING_TIMEOUT_S * 2)  # within a SIGTERM's 10 s
        except KafkaException as error:
            raise KafkaIOError(f"cannot initialise transactions: {error}") from error
        self._transactions_ready = True

    # ------------------------------------------------------------------ exactly-once

    def commit_transaction(
        self, kafka_offsets: list[TopicPartition], group_metadata: Callable[[], Any]
    ) -> None:
        """Send the held records and ``kafka_offsets`` in one transaction, and commit it.

        ``group_metadata`` gives the consumer's group metadata, asked for only when there are
        offsets to send. Library errors are raised as they come (the caller makes them a
        :class:`KafkaIOError`), except when held records were refused for good: then a
        :class:`DeliveryFailed` naming them. The transaction is left for :meth:`abort`.
        """
        self._ensure_transactions()
        self.producer.begin_transaction()
        self._in_transaction = True
        self._failures = []  # what follows is this transaction's
        refused: list[RejectedRecord] = []
        for topic, key, value, source in self._held:
            try:
                self._send(topic, key, value, source)
            except RecordsRejected as error:  # produce() checks the same, before
                refused.extend(error.rejected)
        if refused:
            raise delivery_failure(refused, [], what="held records were refused")
        # No longer than the two calls took before they were retried.
        deadline = time.monotonic() + 3 * BLOCKING_TIMEOUT_S
        try:
            if kafka_offsets:
                metadata = group_metadata()
                retry_retriable(
                    lambda timeout: self.producer.send_offsets_to_transaction(
                        kafka_offsets, metadata, timeout
                    ),
                    "sending the offsets to the transaction",
                    timeout_s=BLOCKING_TIMEOUT_S,
                    deadline=deadline,
                )
            retry_retriable(
                self.producer.commit_transaction,
                "committing the transaction",
                timeout_s=2 * BLOCKING_TIMEOUT_S,
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
        refused: list[tuple[HeldRecord, str, str]] = []
        others: list[str] = []
        for source, error, message in failures:
            code = rejection(error)
            if code is not None:
                refused.append(((message.topic(), message.key(), message.value(), source), code, error.str()))
            elif error.code() not in ABORTED:
                others.append(f"{message.topic()}: {error.str()}")
        # Several refused: the broker refused whole batches. Each try of the search is a
        # transaction of its own, aborted (invisible to read_committed readers).
        return transaction_failure(
            refused,
            others,
            abort=self._abort_failed_transaction,
            probe=self._probe,
            deadline=time.monotonic() + _ISOLATION_BUDGET_S,
            errors=(KafkaException, KafkaIOError),
        )

    def _abort_failed_transaction(self) -> None:
        self.producer.abort_transaction(BLOCKING_TIMEOUT_S)
        self._in_transaction = False

    def _probe(self, group: Sequence[HeldRecord], deadline: float) -> list[Refusal]:
        """The refusals among ``group``, sent in a transaction of its own that is then aborted."""
        self._ensure_transactions()
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
                self.producer.abort_transaction(BLOCKING_TIMEOUT_S)
            finally:
                self._in_transaction = False


def _report(
    reports: dict[int, KafkaError | None], index: int, error: KafkaError | None, _message: Any
) -> None:
    reports[index] = error
