"""The Kafka client on confluent-kafka (librdkafka), the optional fast one (``--kafka-client confluent``).

Same behaviour as :mod:`stream_lstm.kafka.kafka_python` behind the interface of
:mod:`stream_lstm.kafka.interface`. librdkafka does the network work on its own threads in C; the
consumer's rebalance callbacks and the producer's delivery reports run inside ``consume`` and
``poll``/``flush`` on the caller's thread. This module is the consumer and the client as a whole;
the producer and the transaction are :class:`~stream_lstm.kafka.confluent_sender.ConfluentSender`.

Differences that matter here: a partition can only be positioned while librdkafka assigns it,
so seeks asked for inside the assignment callback become the start offsets handed to
``assign``; and every transactional call takes a timeout, so a broker outage during an
exactly-once commit cannot block a shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from stream_lstm.kafka.confluent_library import BLOCKING_TIMEOUT_S, create_client
from stream_lstm.kafka.confluent_sender import ConfluentSender
from stream_lstm.kafka.interface import KafkaIOError, KafkaSettings, Message, Partition
from stream_lstm.kafka.sender import SendingClient

log = logging.getLogger(__name__)


class ConfluentIO(SendingClient):
    """A consumer in a group, reading the input topic without auto-commit, and one producer.

    See :class:`stream_lstm.kafka.interface.KafkaClient` for the contract of every method; the
    producer's are passed to :attr:`sender` (see :class:`~stream_lstm.kafka.sender.SendingClient`).
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
        self.consumer = create_client(
            Consumer,
            {
                **common,
                "group.id": settings.group_id,
                "enable.auto.commit": False,  # offsets are committed only after predictions are acked
                "enable.auto.offset.store": False,
                # Where a partition starts without a checkpoint or a committed offset (--start-from).
                "auto.offset.reset": settings.start_from,
                "isolation.level": "read_committed",
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": settings.heartbeat_interval_ms,
                # librdkafka refuses a poll interval shorter than the session timeout (kafka-python
                # accepts it): a poll interval that short can only mean "as short as possible".
                "max.poll.interval.ms": max(settings.max_poll_interval_ms, settings.session_timeout_ms),
                "max.partition.fetch.bytes": settings.max_partition_fetch_bytes,
                "fetch.wait.max.ms": settings.fetch_max_wait_ms,
                "enable.partition.eof": False,
                **settings.security.confluent_config(),
            },
        )
        self._assigning: dict[Partition, int] | None = None  # start offsets while in on_assign
        try:
            self.sender = ConfluentSender(settings, common)
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
        """Start ``partition`` at the group's committed offset, or without one at its beginning or
        its end (``settings.start_from``)."""
        committed = self.committed(partition)
        if committed is None:
            committed = OFFSET_END if self.settings.start_from == "latest" else OFFSET_BEGINNING
        self.seek(partition, committed)

    def seek_to_beginning(self, partition: Partition) -> None:
        """Start ``partition`` at its first offset."""
        self.seek(partition, OFFSET_BEGINNING)

    def assignment(self) -> list[Partition]:
        """The partitions this consumer owns now."""
        return sorted((tp.topic, tp.partition) for tp in self.consumer.assignment())

    def committed(self, partition: Partition) -> int | None:
        """The group's committed (next) offset of ``partition``, or ``None``."""
        try:
            [found] = self.consumer.committed([TopicPartition(*partition)], timeout=BLOCKING_TIMEOUT_S)
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

    # ------------------------------------------------------------------ offsets

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit next offsets for the group; in exactly-once mode, commit the transaction with them."""
        owned = set(self.assignment())
        # Never commit for a partition another member owns now: that would rewind its offset.
        kafka_offsets = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in owned]
        try:
            if self.settings.exactly_once:
                self.sender.commit_transaction(kafka_offsets, lambda: self.consumer.consumer_group_metadata())
            elif kafka_offsets:
                results = self.consumer.commit(offsets=kafka_offsets, asynchronous=False) or []
                failed = [tp for tp in results if tp.error is not None]
                if failed:
                    raise KafkaIOError(f"commit failed for {len(failed)} partitions: {failed[0].error}")
        except KafkaException as error:
            raise KafkaIOError(f"commit failed: {error}") from error

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
