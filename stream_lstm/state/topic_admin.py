"""Creating the checkpoint topic: one partition, compacted, with segments that let compaction work.

:class:`~stream_lstm.state.topic_store.KafkaTopicStore` calls :func:`create_store_topic` when it
connects; a topic that exists already is used as it is (its partition count is checked by the
store).
"""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient

from stream_lstm.errors import CheckpointError
from stream_lstm.kafka.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36

#: TOPIC_AUTHORIZATION_FAILED and CLUSTER_AUTHORIZATION_FAILED: this principal may not create it.
NOT_AUTHORIZED = (29, 31)

#: The settings of a topic created for checkpoints. Compaction never touches the active segment:
#: it rolls hourly, and the cleaner starts early, so that what a new reader must read stays small.
STORE_TOPIC_CONFIGS = {
    "cleanup.policy": "compact",
    "segment.ms": str(3600 * 1000),
    "min.cleanable.dirty.ratio": "0.1",
}


def create_store_topic(
    bootstrap_servers: str,
    topic: str,
    *,
    connect_timeout_s: float,
    timeout_s: float,
    security: KafkaSecurity = PLAINTEXT,
) -> None:
    """Create ``topic`` (one partition, :data:`STORE_TOPIC_CONFIGS`) unless it exists.

    Raises :class:`CheckpointError` when the cluster refuses it. A principal without the Create
    permission is refused even for a topic that exists: that refusal only logs a warning, and
    the store then uses the topic if it exists (an operator created it, compacted, one partition).
    """
    defaults = {
        "bootstrap_servers": bootstrap_servers,
        "client_id": "stream-lstm-store",
        "bootstrap_timeout_ms": int(connect_timeout_s * 1000),
    }
    admin = KafkaAdminClient(**security.kafka_python_config(KafkaAdminClient.DEFAULT_CONFIG, defaults))
    try:
        response = admin.create_topics(
            {topic: {"num_partitions": 1, "replication_factor": -1, "configs": dict(STORE_TOPIC_CONFIGS)}},
            timeout_ms=int(timeout_s * 1000),
            raise_errors=False,
        )
        for result in response["topics"]:
            code = result["error_code"]
            if code in NOT_AUTHORIZED:
                log.warning("not authorized to create the checkpoint topic %r; using it if it exists", topic)
            elif code not in (0, _TOPIC_ALREADY_EXISTS):
                raise CheckpointError(
                    f"cannot create the checkpoint topic {topic!r}: "
                    f"{result.get('error_message') or 'no message'} (Kafka error code {code})"
                )
    finally:
        admin.close()
