"""A record of the checkpoint topic built to run code is refused, and runs nothing (both brokers).

The records are written as a writer of the topic would write a checkpoint (chunks, then a
manifest whose size and hash match them), so that only the decoder stands between them and the
service: it refuses them without unpickling (the marker file never appears), and the store skips
them, counted, as it skips any record that is not a checkpoint.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from kafka import KafkaProducer

from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.messages.events import Event
from stream_lstm.state.store import InstanceState
from stream_lstm.state.topic_chunks import chunk_key, instance_name, new_manifest, partition_name
from stream_lstm.state.topic_store import KafkaTopicStore
from tests.integration.conftest import Broker
from tests.old_checkpoints import assert_payload_runs, code_running_checkpoints

REASONS = {"old header": "old_format", "raw pickle": "not_a_checkpoint"}


def publish_checkpoint(bootstrap: str, topic: str, name: str, data: bytes) -> None:
    """``data`` as the live version of checkpoint ``name``: one chunk and its manifest."""
    version = uuid.uuid4().hex
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        producer.send(topic, key=chunk_key(name, version, 0).encode(), value=data).get(timeout=30)
        manifest = json.dumps(new_manifest(data, 1, version)).encode()
        producer.send(topic, key=name.encode(), value=manifest).get(timeout=30)
    finally:
        producer.close()


@pytest.mark.parametrize("form", sorted(REASONS))
def test_a_code_running_record_is_refused_and_runs_nothing(broker: Broker, form: str, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    assert_payload_runs(marker)
    topic = f"ckpt-{uuid.uuid4().hex[:12]}"
    store = KafkaTopicStore(broker.bootstrap_servers, topic)  # creates the topic
    try:
        evaluator = PrequentialEvaluator(build_models(["no_change"]))
        evaluator.process([Event(key="k", label=1)])
        store.save_instance(InstanceState(evaluator=evaluator, instance="good"))
        payload = code_running_checkpoints(marker)[form]
        publish_checkpoint(broker.bootstrap_servers, topic, instance_name("evil"), payload)
        publish_checkpoint(broker.bootstrap_servers, topic, partition_name(("events", 0)), payload)

        rejected: list[tuple[str, str]] = []
        reader = KafkaTopicStore(
            broker.bootstrap_servers, topic, on_rejected=lambda reason, name: rejected.append((reason, name))
        )
        try:
            # Skipped and counted, never fatal: there is no earlier version to fall back to.
            assert reader.load_instance("evil") is None
            assert reader.load_partition(("events", 0)) is None
            assert sorted(rejected) == sorted(
                [(REASONS[form], instance_name("evil")), (REASONS[form], partition_name(("events", 0)))]
            )
            # A new instance warm-starting skips the hostile record for a good checkpoint.
            newest = reader.newest_other_instance("new")
            assert newest is not None and newest.instance == "good"
        finally:
            reader.close()
    finally:
        store.close()
    assert not marker.exists()
