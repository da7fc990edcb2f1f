"""The Kafka client on kafka-python, the default (pure Python: nothing to compile, slower).

Implements :class:`stream_lstm.kafka_io.KafkaClient`; the only module that imports kafka-python.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

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
        self._pending: list[Any] = []  # futures of records sent since the last flush
        self._held: list[tuple[str, bytes | None, bytes]] = []  # exactly-once: records of the open interval
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

    def produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue a record; :meth:`flush` waits until the broker has acknowledged it.

        In exactly-once mode records are held here and sent by :meth:`commit`, inside the
        transaction that also commits their offsets: a crash before the commit leaves nothing on
        the broker (which also spares read_committed readers of brokers that do not hide aborted
        records, as the embedded one does not).
        """
        if self.settings.exactly_once:
            self._held.append((topic, key, value))
            return
        try:
            future = self.producer.send(topic, key=key, value=value)
        except KafkaError as error:
            raise DeliveryFailed(f"cannot send to {topic}: {error}") from error
        self._pending.append(future)

    def flush(self, timeout_s: float) -> None:
        """Wait until the broker has acknowledged every record sent since the last flush.

        Raises :class:`DeliveryPending` when some are still in flight after ``timeout_s`` (call
        again later), and :class:`DeliveryFailed` when some were rejected for good.
        """
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaError as error:
            raise DeliveryPending(f"flush did not finish: {error}") from error
        failed = [future for future in self._pending if future.is_done and future.failed()]
        if failed:
            self._pending = []
            raise DeliveryFailed(f"{len(failed)} records were not delivered: {failed[0].exception}")
        self._pending = [future for future in self._pending if not future.is_done]
        if self._pending:
            raise DeliveryPending(f"{len(self._pending)} records not acknowledged within {timeout_s:.1f} s")

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
        """Commit next offsets for the group; in exactly-once mode, commit the transaction with them."""
        owned = self.consumer.assignment()
        # Never commit for a partition another member owns now: that would rewind its offset.
        kafka_offsets = {
            tp: OffsetAndMetadata(o, "", -1)
            for p, o in offsets.items()
            if (tp := TopicPartition(*p)) in owned
        }
        try:
            if self.settings.exactly_once:
                self.producer.begin_transaction()
                self._in_transaction = True
                for topic, key, value in self._held:
                    self.producer.send(topic, key=key, value=value)
                if kafka_offsets:
                    self.producer.send_offsets_to_transaction(kafka_offsets, self.consumer.group_metadata())
                self.producer.commit_transaction()
                self._in_transaction = False
                self._held = []
            elif kafka_offsets:
                self.consumer.commit(kafka_offsets, timeout_ms=BLOCKING_TIMEOUT_MS)
        except KafkaError as error:
            raise KafkaIOError(f"commit failed: {error}") from error

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
