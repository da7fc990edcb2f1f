"""The checkpoint topic through confluent-kafka (:mod:`stream_lstm.state.store_log`)."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream_lstm.errors import CheckpointError, ConfigError
from stream_lstm.kafka.security import KafkaSecurity
from stream_lstm.state.store_log import RECORD_HEADROOM, StoreLogError, StoreRecord, single_partition
from stream_lstm.state.topic_admin import STORE_TOPIC_CONFIGS

log = logging.getLogger(__name__)

#: librdkafka's offset of "no position yet".
_NO_OFFSET = -1001


class ConfluentStoreLog:
    """A :class:`~stream_lstm.state.store_log.StoreLog` on confluent-kafka (librdkafka)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        security: KafkaSecurity,
        chunk_bytes: int,
        timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        common: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "client.id": f"stream-lstm-store-{topic}",
            "logger": log,
        }
        options = security.confluent_config()  # last, as for every client: an option overrides
        self._create_topic({**common, **options}, connect_timeout_s)
        self._failures: list[KafkaError] = []
        self._producer = _client(
            Producer,
            {
                **common,
                "acks": "all",
                "linger.ms": 0,
                "message.max.bytes": chunk_bytes + RECORD_HEADROOM,
                **options,
            },
        )
        self._consumer = _client(
            Consumer,
            {
                **common,
                # Only assigned, never subscribed: the group is never joined and nothing is committed.
                "group.id": f"stream-lstm-store-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 10,
                "max.partition.fetch.bytes": max(chunk_bytes + RECORD_HEADROOM, 1024 * 1024),
                "auto.offset.reset": "earliest",
                **options,
            },
        )
        try:
            metadata = self._consumer.list_topics(topic, timeout=timeout_s)
            single_partition(topic, len(metadata.topics[topic].partitions))
            self._consumer.assign([TopicPartition(topic, 0, -2)])  # -2: the beginning
            self._position = self._low_watermark()
        except BaseException as error:
            self.close(1.0)
            if isinstance(error, KafkaException):
                raise StoreLogError(f"cannot read the checkpoint topic {topic!r}: {error}") from error
            raise

    def _create_topic(self, common: dict[str, Any], timeout_s: float) -> None:
        admin = _client(AdminClient, common)
        new = NewTopic(self.topic, num_partitions=1, replication_factor=-1, config=dict(STORE_TOPIC_CONFIGS))
        future = admin.create_topics([new], operation_timeout=timeout_s, request_timeout=timeout_s)[
            self.topic
        ]
        try:
            future.result(timeout=timeout_s)
        except KafkaException as error:
            kafka_error = error.args[0]
            if kafka_error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            if kafka_error.code() in (
                KafkaError.TOPIC_AUTHORIZATION_FAILED,
                KafkaError.CLUSTER_AUTHORIZATION_FAILED,
            ):
                log.warning(
                    "not authorized to create the checkpoint topic %r; using it if it exists", self.topic
                )
                return
            if kafka_error.code() in (
                KafkaError._TRANSPORT,
                KafkaError._TIMED_OUT,
                KafkaError._ALL_BROKERS_DOWN,
            ):
                raise StoreLogError(
                    f"cannot create the checkpoint topic {self.topic!r}: {kafka_error}"
                ) from None
            raise CheckpointError(
                f"cannot create the checkpoint topic {self.topic!r}: {kafka_error}"
            ) from None
        except TimeoutError:
            raise StoreLogError(f"cannot create the checkpoint topic {self.topic!r}: no answer") from None

    def _low_watermark(self) -> int:
        low, _ = self._watermarks()
        return low

    def _watermarks(self) -> tuple[int, int]:
        try:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, 0), timeout=self.timeout_s
            )
        except KafkaException as error:
            raise StoreLogError(f"cannot read the offsets of {self.topic!r}: {error}") from error
        return int(low), int(high)

    def end_offset(self) -> int:
        return self._watermarks()[1]

    def position(self) -> int:
        return self._position

    def poll(self, timeout_s: float) -> list[StoreRecord]:
        try:
            messages = self._consumer.consume(num_messages=1000, timeout=timeout_s)
        except KafkaException as error:
            raise StoreLogError(f"cannot read {self.topic!r}: {error}") from error
        records = []
        for message in messages:
            error = message.error()
            if error is not None:
                raise StoreLogError(f"cannot read {self.topic!r}: {error}")
            kind, timestamp = message.timestamp()
            records.append(StoreRecord(message.key(), message.value(), timestamp if kind else -1))
            self._position = message.offset() + 1
        return records

    def send(self, records: list[tuple[bytes, bytes | None]], timeout_s: float) -> None:
        self._failures.clear()
        deadline = time.monotonic() + timeout_s
        try:
            for key, value in records:
                while True:
                    try:
                        self._producer.produce(self.topic, key=key, value=value, on_delivery=self._delivered)
                        break
                    except BufferError:  # the local queue is full: serve delivery reports, then retry
                        self._producer.poll(0.05)
                        if time.monotonic() > deadline:
                            raise StoreLogError(
                                "not acknowledged: the producer's queue stayed full"
                            ) from None
        except KafkaException as error:
            raise StoreLogError(f"not acknowledged: {error}") from error
        remaining = self._producer.flush(max(deadline - time.monotonic(), 0.1))
        if remaining:
            raise StoreLogError(
                f"not acknowledged: {remaining} record(s) still waiting after {timeout_s:g} s"
            )
        if self._failures:
            raise StoreLogError(f"not acknowledged: {self._failures[0]}")

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._failures.append(error)

    def close(self, timeout_s: float) -> None:
        producer, consumer = getattr(self, "_producer", None), getattr(self, "_consumer", None)
        try:
            if producer is not None:
                producer.flush(timeout_s)
        finally:
            if consumer is not None:
                consumer.close()


def _client(kind: Any, config: dict[str, Any]) -> Any:
    try:
        return kind(config)
    except KafkaException as error:
        raise ConfigError(f"confluent-kafka refused the configuration: {error.args[0].str()}") from None
