"""Records in the checkpoint topic that are not checkpoints, on both test brokers: with a key, a
checkpoint a plain producer wrote without it is refused, counted, and the genuine one is loaded;
with or without one, garbage records and manifests are skipped with a warning, never fatal."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from kafka import KafkaProducer

from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.messages.events import Event
from stream_lstm.state.checkpoint import encode_checkpoint
from stream_lstm.state.directory_store import InstanceState, PartitionState
from stream_lstm.state.signing import MIN_KEY_BYTES, CheckpointSigner
from stream_lstm.state.topic_chunks import new_manifest
from stream_lstm.state.topic_store import KafkaTopicStore
from tests.integration.conftest import Broker
from tests.integration.state.test_topic_store import raw_records

SIGNER = CheckpointSigner(b"k" * MIN_KEY_BYTES)


@pytest.fixture
def store_topic() -> str:
    return f"ckpt-{uuid.uuid4().hex[:12]}"


class Rejections(list):
    """An ``on_rejected`` that keeps what it is told."""

    def __call__(self, reason: str, name: str) -> None:
        self.append((reason, name))


def instance_state(instance: str, events: int) -> InstanceState:
    evaluator = PrequentialEvaluator(build_models(["no_change"]))
    evaluator.process([Event(key="k", label=1)] * events)
    return InstanceState(evaluator=evaluator, instance=instance)


def produce(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    """Write ``records`` as anyone with produce rights on the topic could, and wait for them."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for future in [producer.send(topic, key=key.encode(), value=value) for key, value in records]:
            future.get(timeout=30)
    finally:
        producer.close(timeout=10)


def forged(name: str, state: object, epoch: int = 0) -> list[tuple[str, bytes]]:
    """A well-formed, unsigned checkpoint of ``state`` under ``name``: its chunk, then its manifest."""
    data = encode_checkpoint(state)
    manifest = new_manifest(data, 1, "forged", epoch)
    return [(f"{name}@forged/0", data), (name, json.dumps(manifest).encode())]


def test_with_a_key_a_checkpoint_written_without_it_is_refused_and_the_genuine_one_loads(
    broker: Broker, store_topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = broker.bootstrap_servers
    rejections = Rejections()
    writer = KafkaTopicStore(bootstrap, store_topic, signer=SIGNER)
    reader = KafkaTopicStore(bootstrap, store_topic, signer=SIGNER, on_rejected=rejections)
    try:
        writer.save_instance(instance_state("a", 5))
        writer.save_partition(PartitionState(topic="in", partition=0, offset=7, instance="a", epoch=3))
        # A forged instance, and a forged partition with a huge epoch that would make every
        # genuine write stale if it were believed.
        produce(
            bootstrap,
            store_topic,
            forged("instances/a", instance_state("a", 999))
            + forged("partitions/in/0", PartitionState(topic="in", partition=0, offset=10**6), epoch=2**62),
        )
        with caplog.at_level(logging.WARNING, logger="stream_lstm.state.topic_screen"):
            assert reader.load_instance("a").evaluator.events == 5
            assert reader.load_partition(("in", 0)).offset == 7
        assert rejections == [("unsigned", "instances/a"), ("unsigned", "partitions/in/0")]
        assert "skipping checkpoint record instances/a in Kafka topic" in caplog.text
        assert "(unsigned): manifest instances/a in Kafka topic" in caplog.text
        # The genuine writer is not taken for stale, and writes its manifests again, so that
        # compaction (which keeps a key's last record) keeps the genuine ones.
        writer.refresh()
        writer.save_partition(PartitionState(topic="in", partition=0, offset=9, instance="a", epoch=3))
        last = {key: value for key, value in raw_records(bootstrap, store_topic)}
        assert SIGNER.check_manifest(json.loads(last["instances/a"]), "instances/a", "here") is None
        fresh_rejections = Rejections()
        fresh = KafkaTopicStore(bootstrap, store_topic, signer=SIGNER, on_rejected=fresh_rejections)
        try:
            assert fresh.load_partition(("in", 0)).offset == 9
            assert fresh.load_instance("a").evaluator.events == 5
            assert fresh.partitions() == [("in", 0)]
            assert ("unsigned", "instances/a") in fresh_rejections
        finally:
            fresh.close()
    finally:
        writer.close()
        reader.close()


def test_garbage_records_and_manifests_are_skipped_with_a_warning_never_fatal(
    broker: Broker, store_topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = broker.bootstrap_servers
    writer = KafkaTopicStore(bootstrap, store_topic)
    try:
        writer.save_instance(instance_state("a", 4))
        writer.save_partition(PartitionState(topic="in", partition=0, offset=5, instance="a"))
        writer.save_instance(instance_state("b", 6))
        # A manifest that is not JSON, one that is JSON but no manifest, a chunk no manifest
        # names, a partition name this store never writes, and a well-formed manifest whose
        # chunk (matching its SHA-256) does not decode.
        garbage_payload = b"not a checkpoint at all"
        produce(
            bootstrap,
            store_topic,
            [
                ("partitions/in/0", b"\xff garbage"),
                ("instances/a", b'{"format": 1}'),
                ("instances/c@x/0", b"garbage"),
                ("partitions/in/zero", json.dumps(new_manifest(b"", 0, "v")).encode()),
                ("instances/b@bad/0", garbage_payload),
                ("instances/b", json.dumps(new_manifest(garbage_payload, 1, "bad")).encode()),
            ],
        )
        rejections = Rejections()
        reader = KafkaTopicStore(bootstrap, store_topic, on_rejected=rejections)
        try:
            with caplog.at_level(logging.WARNING, logger="stream_lstm.state.topic_screen"):
                assert reader.load_instance("a").evaluator.events == 4
                assert reader.load_partition(("in", 0)).offset == 5
                assert reader.load_instance("b").evaluator.events == 6  # the one before the bad one
                assert reader.newest_other_instance("z").instance in ("a", "b")
            assert reader.partitions() == [("in", 0)]
            assert sorted(rejections) == [
                ("not_a_checkpoint", "instances/a"),
                ("not_a_checkpoint", "instances/b"),  # its chunk decodes to no checkpoint
                ("not_a_checkpoint", "partitions/in/0"),
            ]
            assert "skipping checkpoint record partitions/in/0 in Kafka topic" in caplog.text
            assert "falling back to an earlier checkpoint of instances/b" in caplog.text
        finally:
            reader.close()
    finally:
        writer.close()
