"""The event writer on confluent-kafka: puts events on a topic for ``produce``, ``demo`` and the benchmarks.

:class:`~stream_lstm.kafka.connect.EventWriter` picks it for ``--kafka-client confluent``.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, Producer

from stream_lstm.kafka.confluent_library import create_client, produce_waiting
from stream_lstm.kafka.interface import KafkaIOError
from stream_lstm.kafka.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)


class ConfluentEventWriter:
    """Produces events as JSON messages keyed by their entity key (so each key keeps its order)."""

    def __init__(
        self, bootstrap_servers: str, topic: str, *, linger_ms: int = 20, security: KafkaSecurity = PLAINTEXT
    ) -> None:
        self.topic = topic
        self.producer = create_client(
            Producer,
            {
                "bootstrap.servers": bootstrap_servers,
                "client.id": "stream-lstm-producer",
                "acks": "all",
                "linger.ms": linger_ms,
                "logger": log,
                **security.confluent_config(),
            },
        )
        self._failures: list[str] = []

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._failures.append(str(error))

    def send(self, key: str, value: bytes) -> None:
        """Queue one message."""
        produce_waiting(self.producer, self.topic, key.encode(), value, self._delivered)
        self.producer.poll(0)

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait for every message to be acknowledged."""
        remaining = self.producer.flush(timeout_s)
        if remaining or self._failures:
            raise KafkaIOError(
                f"{remaining + len(self._failures)} messages were not delivered"
                + (f": {self._failures[0]}" if self._failures else "")
            )
