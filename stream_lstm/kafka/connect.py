"""Opening a Kafka client by name: the one place that knows both client libraries.

:func:`open_kafka` gives the service a :class:`~stream_lstm.kafka.interface.KafkaClient` for
``--kafka-client``; :class:`EventWriter` is the producer that the ``produce`` and ``demo`` commands
and the benchmarks use to put events on a topic. The modules of each client import only the
interface, the delivery helpers, the sender base and their own client's modules, so the clients
never import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from stream_lstm.errors import ConfigError
from stream_lstm.kafka.interface import KAFKA_CLIENTS, KafkaClient, KafkaSettings, Partition
from stream_lstm.kafka.security import PLAINTEXT, KafkaSecurity


def open_kafka(
    settings: KafkaSettings,
    *,
    on_assigned: Callable[[list[Partition]], None],
    on_revoked: Callable[[list[Partition]], None],
    on_lost: Callable[[list[Partition]], None] | None = None,
) -> KafkaClient:
    """Connect with the client library ``settings.client`` names."""
    if settings.client == "confluent":
        from stream_lstm.kafka.confluent import ConfluentIO

        return ConfluentIO(settings, on_assigned=on_assigned, on_revoked=on_revoked, on_lost=on_lost)
    from stream_lstm.kafka.kafka_python import KafkaPythonIO

    return KafkaPythonIO(settings, on_assigned=on_assigned, on_revoked=on_revoked, on_lost=on_lost)


def check_kafka_client(name: str) -> str:
    """``name`` if it is a known client whose library is installed; else a :class:`ConfigError`."""
    if name not in KAFKA_CLIENTS:
        raise ConfigError(f"unknown Kafka client {name!r}; choose from {', '.join(KAFKA_CLIENTS)}")
    if name == "confluent":
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--kafka-client confluent needs the confluent-kafka package: "
                "pip install 'stream-lstm[confluent]' (or pip install confluent-kafka)"
            ) from None
    return name


class _Writer(Protocol):
    def send(self, key: str, value: bytes) -> None: ...

    def close(self, timeout_s: float) -> None: ...


class EventWriter:
    """Produces events as JSON messages keyed by their entity key (so each key keeps its order)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        linger_ms: int = 20,
        client: str = KAFKA_CLIENTS[0],
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        if check_kafka_client(client) == "confluent":
            from stream_lstm.kafka.confluent_writer import ConfluentEventWriter

            self._writer: _Writer = ConfluentEventWriter(
                bootstrap_servers, topic, linger_ms=linger_ms, security=security
            )
        else:
            from stream_lstm.kafka.kafka_python_writer import KafkaPythonEventWriter

            self._writer = KafkaPythonEventWriter(
                bootstrap_servers, topic, linger_ms=linger_ms, security=security
            )
        self.topic = topic

    def send(self, key: str, value: bytes) -> None:
        """Queue one message."""
        self._writer.send(key, value)

    def close(self, timeout_s: float = 30.0) -> None:
        """Wait for every message to be acknowledged, then close."""
        self._writer.close(timeout_s)
