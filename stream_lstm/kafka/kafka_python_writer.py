"""The event writer on kafka-python: puts events on a topic for ``produce``, ``demo`` and the benchmarks.

:class:`~stream_lstm.kafka.connect.EventWriter` picks it for ``--kafka-client kafka-python``.
"""

from __future__ import annotations

from kafka import KafkaProducer

from stream_lstm.kafka.security import PLAINTEXT, KafkaSecurity


class KafkaPythonEventWriter:
    """Produces events as JSON messages keyed by their entity key (so each key keeps its order)."""

    def __init__(
        self, bootstrap_servers: str, topic: str, *, linger_ms: int = 20, security: KafkaSecurity = PLAINTEXT
    ) -> None:
        self.topic = topic
        defaults = {
            "bootstrap_servers": bootstrap_servers.split(","),
            "client_id": "stream-lstm-producer",
            "acks": "all",
            "linger_ms": linger_ms,
            "max_block_ms": 30_000,
        }
        self.producer = KafkaProducer(**security.kafka_python_config(KafkaProducer.DEFAULT_CONFIG, defaults))

    def send(self, key: str, value: bytes) -> None:
        """Queue one message."""
        self.producer.send(self.topic, key=key.encode(), value=value)

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait for every message to be acknowledged, then close."""
        try:
            self.producer.flush(timeout=timeout_s)
        finally:
            self.producer.close(timeout=timeout_s)
