"""The Kafka client on confluent-kafka (librdkafka), the optional fast one (``--kafka-client confluent``).

Same behaviour as :mod:`stream_lstm.kafka_python_client` behind the interface of
:mod:`stream_lstm.kafka_io`. librdkafka does the network work on its own threads in C; the
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
from collections.abc import Callable, Mapping
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
from stream_lstm.kafka_io import (
    BLOCKING_TIMEOUT_MS,
    DeliveryFailed,
    DeliveryPending,
    KafkaIOError,
    KafkaSettings,
    Message,
    Partition,
)

log = logging.getLogger(__name__)

_BLOCKING_TIMEOUT_S = BLOCKING_TIMEOUT_MS / 1000


class ConfluentIO:
    """A consumer in a group, reading the input topic without auto-commit, and one producer.

    See :class:`stream_lstm.kafka_io.KafkaClient` for the contract of every method.
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
        self._failures: list[str] = []
        self._assigning: dict[Partition, int] | None = None  # start offsets while in on_assign
        self._held: list[tuple[str, bytes | None, bytes]] = []  # exactly-once: the open interval
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

    def produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue a record; :meth:`flush` waits until the broker has acknowledged it.

        In exactly-once mode records are held and sent by :meth:`commit`, inside the transaction
        that also commits their offsets (see the kafka-python client for why).
        """
        if self.settings.exactly_once:
            self._held.append((topic, key, value))
            return
        self._send(topic, key, value)

    def _send(self, topic: str, key: bytes | None, value: bytes) -> None:
        try:
            _produce(self.producer, topic, key, value, self._delivered)
        except KafkaException as error:
            raise DeliveryFailed(f"cannot send to {topic}: {error}") from error

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._failures.append(str(error))

    def flush(self, timeout_s: float) -> None:
        """Wait until the broker has acknowledged every record sent since the last flush.

        Raises :class:`DeliveryPending` when some are still in flight after ``timeout_s`` (call
        again later), and :class:`DeliveryFailed` when some were rejected for good.
        """
        remaining = self.producer.flush(timeout_s)
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryFailed(f"{len(failures)} records were not delivered: {failures[0]}")
        if remaining:
            raise DeliveryPending(f"{remaining} records not acknowledged within {timeout_s:.1f} s")

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
                self.producer.begin_transaction()
                self._in_transaction = True
                for topic, key, value in self._held:
                    self._send(topic, key, value)
                # No longer than the two calls took before they were retried.
                deadline = time.monotonic() + 3 * _BLOCKING_TIMEOUT_S
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
                self._in_transaction = False
                self._held = []
            elif kafka_offsets:
                results = self.consumer.commit(offsets=kafka_offsets, asynchronous=False) or []
                failed = [tp for tp in results if tp.error is not None]
                if failed:
                    raise KafkaIOError(f"commit failed for {len(failed)} partitions: {failed[0].error}")
        except KafkaException as error:
            raise KafkaIOError(f"commit failed: {error}") from error

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
