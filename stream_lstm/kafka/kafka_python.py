"""The Kafka client on kafka-python, the default (pure Python: nothing to compile, slower).

Implements :class:`stream_lstm.kafka.interface.KafkaClient`. This module is the consumer and the
client as a whole; the producer and the transaction are
:class:`~stream_lstm.kafka.kafka_python_sender.KafkaPythonSender`. Only these two modules and
:mod:`stream_lstm.kafka.kafka_python_writer` import kafka-python for the service's data path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from stream_lstm.kafka.interface import (
    BLOCKING_TIMEOUT_MS,
    KafkaIOError,
    KafkaSettings,
    Message,
    Partition,
)
from stream_lstm.kafka.kafka_python_sender import KafkaPythonSender
from stream_lstm.kafka.sender import SendingClient

#: The consumer's keywords (taken before a test may replace the class): which options it takes.
_CONSUMER_KEYWORDS = frozenset(KafkaConsumer.DEFAULT_CONFIG)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(
        self,
        on_assigned: Callable[[list[Partition]], None],
        on_revoked: Callable[[list[Partition]], None],
        on_lost: Callable[[list[Partition]], None] | None,
    ):
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._on_lost = on_lost or on_revoked

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._on_revoked(sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_lost(self, lost: Any) -> None:
        # KIP-429: evicted from the group (session expired, poll interval exceeded); without this
        # override, the library calls on_partitions_revoked, whose checkpoint must not be written.
        self._on_lost(sorted((tp.topic, tp.partition) for tp in lost))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._on_assigned(sorted((tp.topic, tp.partition) for tp in assigned))


class KafkaPythonIO(SendingClient):
    """A consumer in a group, reading the input topic without auto-commit, and one producer.

    See :class:`stream_lstm.kafka.interface.KafkaClient` for the contract of every method; the
    producer's are passed to :attr:`sender` (see :class:`~stream_lstm.kafka.sender.SendingClient`).

    Parameters
    ----------
    settings
        Where and what to read and write.
    on_assigned, on_revoked, on_lost
        Called (from inside :meth:`poll`) when the group gives or takes partitions, or evicted
        this member so that they are lost (``on_revoked`` then, without ``on_lost``).
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
        common = {
            "bootstrap_servers": settings.bootstrap_servers.split(","),
            "client_id": settings.client_id,
            "request_timeout_ms": settings.request_timeout_ms,
            "reconnect_backoff_ms": 100,
            "reconnect_backoff_max_ms": 2_000,
            # Without a broker, fail fast and let the service's backoff retry (and hear SIGTERM).
            "bootstrap_timeout_ms": 5_000,
        }
        consumer = {
            **common,
            "group_id": settings.group_id,
            "enable_auto_commit": False,  # offsets are committed only after predictions are acked
            # Where a partition starts without a checkpoint or a committed offset (--start-from).
            "auto_offset_reset": settings.start_from,
            "isolation_level": "read_committed",
            "session_timeout_ms": settings.session_timeout_ms,
            "heartbeat_interval_ms": settings.heartbeat_interval_ms,
            "max_poll_interval_ms": settings.max_poll_interval_ms,
            "max_partition_fetch_bytes": settings.max_partition_fetch_bytes,
            "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        }
        self.consumer = KafkaConsumer(**settings.security.kafka_python_config(_CONSUMER_KEYWORDS, consumer))
        try:
            self.sender = KafkaPythonSender(settings, common)
        except Exception:
            self.consumer.close(autocommit=False)
            raise
        self.consumer.subscribe([settings.input_topic], listener=_Rebalance(on_assigned, on_revoked, on_lost))

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
        """Start ``partition`` at the group's committed offset, or without one at its beginning or
        its end (``settings.start_from``)."""
        committed = self.committed(partition)
        if committed is not None:
            self.seek(partition, committed)
        elif self.settings.start_from == "latest":
            self.consumer.seek_to_end(TopicPartition(*partition))
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
                self.sender.commit_transaction(kafka_offsets, lambda: self.consumer.group_metadata())
            elif kafka_offsets:
                self.consumer.commit(kafka_offsets, timeout_ms=BLOCKING_TIMEOUT_MS)
        except KafkaError as error:
            raise KafkaIOError(f"commit failed: {error}") from error

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
