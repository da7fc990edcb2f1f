"""`stream-lstm run --checkpoint-key-file` on Apache Kafka with a checkpoint topic holding a
forged, unsigned partition checkpoint: the service refuses it, counts it in /metrics, never
shows the key, and processes the partition from the start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream_lstm.offline.generator import temporal_stream
from stream_lstm.state.checkpoint import encode_checkpoint
from stream_lstm.state.directory_store import PartitionState
from stream_lstm.state.signing import CheckpointSigner
from stream_lstm.state.topic_admin import create_store_topic
from stream_lstm.state.topic_chunks import new_manifest
from stream_lstm.state.topic_store import KafkaTopicStore
from stream_lstm.testing.apache_kafka import ApacheKafkaBroker
from tests.integration.service_harness import ServiceProcess, TopicReader, produce, produce_raw, wait_for

pytestmark = pytest.mark.slow

KEY = "a-checkpoint-key-of-at-least-32-bytes-for-this-test"


def rejected(service: ServiceProcess, reason: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    """The service's count of checkpoints refused for ``reason``, from its /metrics."""
    for family in text_string_to_metric_families(service.metrics()):
        for sample in family.samples:
            if sample.name == "stream_lstm_checkpoints_rejected_total" and sample.labels["reason"] == reason:
                return sample.value
    return None


def test_a_forged_checkpoint_record_is_refused_counted_and_never_believed(
    apache_kafka: ApacheKafkaBroker, group_id: str, tmp_path: Path
) -> None:
    bootstrap = apache_kafka.bootstrap_servers
    suffix = group_id.removeprefix("group-")
    topics = {"input": f"in-{suffix}", "output": f"out-{suffix}", "dead": f"dead-{suffix}"}
    store_topic = f"ckpt-{suffix}"
    apache_kafka.create_topics(list(topics.values()), partitions=1)
    create_store_topic(bootstrap, store_topic, connect_timeout_s=30, timeout_s=30)
    # Believed, this would make the service skip the whole input (offset 10**6) and take every
    # genuine write for stale (its epoch).
    forged = encode_checkpoint(PartitionState(topic=topics["input"], partition=0, offset=10**6))
    name = f"partitions/{topics['input']}/0"
    produce_raw(
        bootstrap,
        store_topic,
        [
            (f"{name}@forged/0".encode(), forged),
            (name.encode(), json.dumps(new_manifest(forged, 1, "forged", epoch=2**62)).encode()),
        ],
    )
    produce(bootstrap, topics["input"], temporal_stream(100, n_keys=4, seed=6))
    key_file = tmp_path / "checkpoint-key"
    key_file.write_text(KEY + "\n")
    service = ServiceProcess(
        bootstrap,
        topics,
        group_id,
        tmp_path,
        "--checkpoint-topic",
        store_topic,
        "--checkpoint-key-file",
        str(key_file),
        "--checkpoint-interval",
        "1",
    ).start()
    try:
        service.wait_ready(120)
        reader = TopicReader(bootstrap, topics["output"])
        reader.read_until(lambda records: len(records) >= 100, 90, "100 predictions")
        wait_for(lambda: rejected(service, "unsigned") == 1, 30, "the refusal counted in /metrics")
        assert rejected(service, "bad_signature") == 0
        assert service.terminate() < 10
        log = service.log()
        assert f"skipping checkpoint record {name} in Kafka topic {store_topic}" in log
        assert "(unsigned)" in log
        assert KEY not in log
    finally:
        service.cleanup()
    # Its final checkpoint is signed, and was not taken for stale beside the forged epoch.
    store = KafkaTopicStore(bootstrap, store_topic, signer=CheckpointSigner(KEY.encode()))
    try:
        assert store.load_partition((topics["input"], 0)).offset == 100
    finally:
        store.close()
