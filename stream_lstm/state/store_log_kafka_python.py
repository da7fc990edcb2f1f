"""The checkpoint topic through kafka-python (:mod:`stream_lstm.state.store_log`)."""

from __future__ import annotations

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from stream_lstm.kafka.security import KafkaSecurity
from stream_lstm.state.store_log import RECORD_HEADROOM, StoreLogError, StoreRecord, single_partition
from stream_lstm.state.topic_admin import create_store_topic


class KafkaPythonStoreLog:
    """A :class:`~stream_lstm.state.store_log.StoreLog` on kafka-python."""

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
        self._partition = TopicPartition(topic, 0)
        # kafka-python waits without end for an offset unless told otherwise: a broker that does
        # not answer would wedge the checkpoint, and with it the service's loop.
        self._timeout_s = timeout_s
        try:
            create_store_topic(
                bootstrap_servers,
                topic,
                connect_timeout_s=connect_timeout_s,
                timeout_s=timeout_s,
                security=security,
            )
            producer = {
                "bootstrap_servers": bootstrap_servers,
                "acks": "all",
                "linger_ms": 0,
                "max_request_size": chunk_bytes + RECORD_HEADROOM,
                "client_id": f"stream-lstm-store-{topic}",
            }
            self._producer = KafkaProducer(
                **security.kafka_python_config(KafkaProducer.DEFAULT_CONFIG, producer)
            )
        except KafkaError as error:
            raise StoreLogError(f"cannot open the checkpoint topic {topic!r}: {error}") from error
        try:
            consumer = {
                "bootstrap_servers": bootstrap_servers,
                "group_id": None,
                "enable_auto_commit": False,
                "fetch_max_wait_ms": 10,
                "request_timeout_ms": int(timeout_s * 1000),
                "max_partition_fetch_bytes": max(chunk_bytes + RECORD_HEADROOM, 1024 * 1024),
                "client_id": f"stream-lstm-store-{topic}",
            }
            self._consumer = KafkaConsumer(
                **security.kafka_python_config(KafkaConsumer.DEFAULT_CONFIG, consumer)
            )
            single_partition(topic, len(self._consumer.partitions_for_topic(topic) or ()))
            self._consumer.assign([self._partition])
            self._consumer.seek_to_beginning(self._partition)
        except BaseException as error:
            self._producer.close(timeout=1.0)
            if hasattr(self, "_consumer"):
                self._consumer.close()
            if isinstance(error, KafkaError):
                raise StoreLogError(f"cannot read the checkpoint topic {topic!r}: {error}") from error
            raise

    def end_offset(self) -> int:
        try:
            timeout_ms = int(self._timeout_s * 1000)
            return int(self._consumer.end_offsets([self._partition], timeout_ms=timeout_ms)[self._partition])
        except KafkaError as error:
            raise StoreLogError(f"cannot read the end of {self.topic!r}: {error}") from error

    def position(self) -> int:
        try:
            position = self._consumer.position(self._partition, timeout_ms=int(self._timeout_s * 1000))
        except KafkaError as error:
            raise StoreLogError(f"cannot read the position in {self.topic!r}: {error}") from error
        if position is None:
            raise StoreLogError(f"no position in {self.topic!r} after {self._timeout_s:g} s")
        return int(position)

    def poll(self, timeout_s: float) -> list[StoreRecord]:
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        except KafkaError as error:
            raise StoreLogError(f"cannot read {self.topic!r}: {error}") from error
        return [
            StoreRecord(record.key, record.value, record.timestamp if record.timestamp is not None else -1)
            for records in batches.values()
            for record in records
        ]

    def send(self, records: list[tuple[bytes, bytes | None]], timeout_s: float) -> None:
        try:
            futures = [self._producer.send(self.topic, key=key, value=value) for key, value in records]
            self._producer.flush(timeout=timeout_s)
            for future in futures:
                future.get(timeout=timeout_s)
        except KafkaError as error:
            raise StoreLogError(f"not acknowledged: {error}") from error

    def close(self, timeout_s: float) -> None:
        try:
            self._producer.close(timeout=timeout_s)
        finally:
            self._consumer.close()
