"""Opening the checkpoint topic with the client library ``--kafka-client`` names.

Apart from :mod:`stream_lstm.state.store_log`, so that the two implementations import the contract
and only this module imports them.
"""

from __future__ import annotations

from collections.abc import Callable

from stream_lstm.kafka.security import PLAINTEXT, KafkaSecurity
from stream_lstm.state.store_log import StoreLog


def open_store_log(
    bootstrap_servers: str,
    topic: str,
    *,
    client: str = "kafka-python",
    security: KafkaSecurity = PLAINTEXT,
    chunk_bytes: int,
    timeout_s: float,
    connect_timeout_s: float,
) -> StoreLog:
    """Create ``topic`` if missing and open it with the client library ``client`` names."""
    kind: Callable[..., StoreLog]
    if client == "confluent":
        from stream_lstm.state.store_log_confluent import ConfluentStoreLog as kind
    else:
        from stream_lstm.state.store_log_kafka_python import KafkaPythonStoreLog as kind
    return kind(
        bootstrap_servers,
        topic,
        security=security,
        chunk_bytes=chunk_bytes,
        timeout_s=timeout_s,
        connect_timeout_s=connect_timeout_s,
    )
