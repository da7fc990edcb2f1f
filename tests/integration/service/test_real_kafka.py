"""What only Apache Kafka shows: transactions that hide aborted records, a broker that restarts with
its data, compaction of the checkpoint topic, and a rebalance while an instance checkpoints.

Each test here runs on Apache Kafka alone: the embedded broker shows aborted records to
``read_committed`` readers, keeps nothing across a restart and has not been shown to compact.
"""

from __future__ import annotations

import collections
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from stream_lstm.offline.generator import temporal_stream
from stream_lstm.testing.apache_kafka import ApacheKafkaBroker
from tests.integration.conftest import checkpoint_of
from tests.integration.service.test_scale_out import produce_steadily
from tests.integration.service_harness import ServiceProcess, TopicReader, produce, wait_for

pytestmark = pytest.mark.slow


def named_topics(kafka: ApacheKafkaBroker, input_partitions: int) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    names = {"input": f"in-{suffix}", "output": f"out-{suffix}", "dead": f"dead-{suffix}"}
    kafka.create_topics([names["input"]], partitions=input_partitions)
    kafka.create_topics([names["output"], names["dead"]], partitions=1)
    return names


def partition_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's end offset (the input topics here are written without transactions)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def predictions_by_offset(records: list[dict[str, Any]]) -> collections.Counter[tuple[int, int]]:
    return collections.Counter((r["source"]["partition"], r["source"]["offset"]) for r in records)


def test_exactly_once_through_sigkills_at_random_moments(
    apache_kafka: ApacheKafkaBroker, group_id: str, tmp_path: Path, kafka_client: str
) -> None:
    """Several SIGKILLs at random moments (during a transaction's commit too): under read_committed
    every input offset has exactly one prediction, and each partition's learned count is its
    offsets. The moments are drawn from a seed the failure message names."""
    seed = random.randrange(1_000_000)
    moments = random.Random(seed)
    kafka = apache_kafka
    topics = named_topics(kafka, input_partitions=2)
    events = list(temporal_stream(4000, n_keys=24, seed=11))
    flags = (
        "--exactly-once",
        "--batch-size",
        "16",
        "--checkpoint-every",
        "200",
        "--checkpoint-interval",
        "1",
    )
    flags += ("--kafka-client", kafka_client)
    stop = threading.Event()
    producer = produce_steadily(kafka.bootstrap_servers, topics["input"], events, 160, stop)
    reader = TopicReader(kafka.bootstrap_servers, topics["output"], read_committed=True)
    services: list[ServiceProcess] = []
    kills = 4
    try:
        for kill in range(kills + 1):
            service = ServiceProcess(kafka.bootstrap_servers, topics, group_id, tmp_path, *flags).start()
            services.append(service)
            service.wait_ready(90)
            if kill == kills:
                break
            # The moment of the kill: a random time into this run's stream, not a wait for an outcome.
            stop.wait(moments.uniform(0.5, 4.0))
            service.assert_alive()
            service.kill()
        producer.join(timeout=120)
        assert not producer.is_alive()
        reader.read_until(lambda r: len(r) >= len(events), 180, f"every committed prediction (seed {seed})")
        assert services[-1].terminate() < 10
        counts = predictions_by_offset(reader.read())
    finally:
        stop.set()
        for service in services:
            service.cleanup()
        reader.close()

    ends = partition_ends(kafka.bootstrap_servers, topics["input"])
    assert sum(ends.values()) == len(events)
    expected = {(partition, offset) for partition, end in ends.items() for offset in range(end)}
    assert set(counts) == expected, f"seed {seed}"
    assert {key: n for key, n in counts.items() if n != 1} == {}, f"seed {seed}: offsets predicted twice"
    final = checkpoint_of(tmp_path)
    for partition, end in ends.items():
        assert final.offsets[(topics["input"], partition)] == end, f"seed {seed}"
        assert final.processed[(topics["input"], partition)] == end, (
            f"seed {seed}: learned a count != offsets"
        )
    assert final.evaluator.models["lstm"].events_learned == final.evaluator.events <= len(events)


@pytest.mark.parametrize("how", ["graceful", "sigkill"])
def test_the_service_rides_out_a_broker_restart_with_its_data(
    own_apache_kafka: ApacheKafkaBroker, group_id: str, tmp_path: Path, kafka_client: str, how: str
) -> None:
    """Mid-stream the broker goes away (stopped, or SIGKILLed) and comes back with its data:
    /healthz and stream_lstm_broker_connected show the outage, and afterwards every event has a
    prediction and was learned exactly once."""
    kafka = own_apache_kafka
    topics = named_topics(kafka, input_partitions=2)
    events = list(temporal_stream(1200, n_keys=12, seed=21))
    service = ServiceProcess(
        kafka.bootstrap_servers,
        topics,
        group_id,
        tmp_path,
        "--checkpoint-every",
        "100",
        "--checkpoint-interval",
        "1",
        "--kafka-client",
        kafka_client,
    )
    reader: TopicReader | None = None
    try:
        service.start()
        produce(kafka.bootstrap_servers, topics["input"], events[:600])
        reader = TopicReader(kafka.bootstrap_servers, topics["output"])
        reader.read_until(lambda r: len(r) >= 600, 90, "predictions before the outage")
        service.wait_ready()
        if how == "graceful":
            kafka.stop()
        else:
            kafka.kill()
        wait_for(
            lambda: (h := service.health()) is not None and h[0] == 503, 60, "/healthz to report not ready"
        )
        assert service.metric("stream_lstm_broker_connected") == 0
        service.assert_alive()
        kafka.start()
        service.wait_ready(timeout=120)
        assert service.metric("stream_lstm_broker_connected") == 1
        produce(kafka.bootstrap_servers, topics["input"], events[600:])
        reader.close()
        reader = TopicReader(kafka.bootstrap_servers, topics["output"])  # a fresh connection
        reader.read_until(
            lambda r: len(set(predictions_by_offset(r))) >= len(events),
            120,
            "every prediction after the outage",
        )
        service.assert_alive()
        assert service.terminate() < 10
        counts = predictions_by_offset(reader.read())
    finally:
        service.cleanup()
        if reader is not None:
            reader.close()

    ends = partition_ends(kafka.bootstrap_servers, topics["input"])
    assert set(counts) == {(p, o) for p, end in ends.items() for o in range(end)}  # nothing lost
    final = checkpoint_of(tmp_path)
    for partition, end in ends.items():
        assert final.processed[(topics["input"], partition)] == end  # nothing learned twice
    assert final.evaluator.models["lstm"].events_learned == final.evaluator.events == len(events)


def topic_records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bool]]:
    """(key, is a tombstone) of every record a reader of ``topic`` gets from its beginning now."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    partition = TopicPartition(topic, 0)
    try:
        consumer.assign([partition])
        end = consumer.end_offsets([partition])[partition]
        consumer.seek_to_beginning()
        seen: list[tuple[bytes | None, bool]] = []
        deadline = time.monotonic() + 30
        while consumer.position(partition) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                seen.extend((record.key, record.value is None) for record in records)
        assert consumer.position(partition) >= end, f"could not read {topic} to its end"
        return seen
    finally:
        consumer.close()


def live_keys(records: list[tuple[bytes | None, bool]]) -> set[bytes | None]:
    """The keys whose latest record is a value: what compaction must keep."""
    latest = dict(records)
    return {key for key, tombstone in latest.items() if not tombstone}


def test_the_checkpoint_topic_stays_bounded_under_compaction(
    apache_kafka: ApacheKafkaBroker, group_id: str, tmp_path: Path
) -> None:
    """Many checkpoints into a topic with small segments and a low dirty ratio: the cleaner keeps
    what a reader gets near one record per live key, however many were written, and a new
    instance resumes from those alone."""
    kafka = apache_kafka
    topics = named_topics(kafka, input_partitions=2)
    store_topic = f"ckpt-{uuid.uuid4().hex[:10]}"
    kafka.create_topics(
        [store_topic],
        configs={
            "cleanup.policy": "compact",
            "segment.ms": "200",
            "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": "200",
            "min.compaction.lag.ms": "0",
        },
    )
    flags = ("--checkpoint-topic", store_topic, "--checkpoint-every", "50", "--checkpoint-interval", "1")
    first = ServiceProcess(kafka.bootstrap_servers, topics, group_id, tmp_path, *flags)
    second = ServiceProcess(kafka.bootstrap_servers, topics, group_id, tmp_path, *flags)
    events = list(temporal_stream(3000, n_keys=16, seed=5))
    reader = TopicReader(kafka.bootstrap_servers, topics["output"])
    stop = threading.Event()
    try:
        first.start()
        producer = produce_steadily(kafka.bootstrap_servers, topics["input"], events[:2500], 500, stop)
        producer.join(timeout=60)
        reader.read_until(lambda r: len(r) >= 2500, 120, "2500 predictions")
        assert first.terminate() < 10
        written = partition_ends(kafka.bootstrap_servers, store_topic)[0]
        wanted = live_keys(topic_records(kafka.bootstrap_servers, store_topic))
        assert written > 20 * len(wanted), (
            f"{written} records for {len(wanted)} live keys: too few checkpoints"
        )

        # Segments older than 200 ms are the cleaner's; the newest, active one never is, and may
        # hold a checkpoint's records and tombstones: a few more than the live keys.
        def compacted() -> list[tuple[bytes | None, bool]] | None:
            records = topic_records(kafka.bootstrap_servers, store_topic)
            return records if len(records) <= 3 * len(wanted) else None

        left = wait_for(compacted, 90, f"compaction of the checkpoint topic ({written} records written)")
        assert live_keys(left) == wanted  # compaction kept every live checkpoint

        # The new instance reads only those, and goes on where the first stopped.
        second.start()
        produce(kafka.bootstrap_servers, topics["input"], events[2500:])
        reader.read_until(lambda r: len(r) >= len(events), 120, "the second instance's predictions")
        assert second.terminate() < 10
        counts = predictions_by_offset(reader.read())
    finally:
        stop.set()
        first.cleanup()
        second.cleanup()
        reader.close()
    assert "continuing at offset" in second.log()
    assert not (tmp_path / "checkpoints").exists()
    assert len(counts) == len(events)
    assert all(n == 1 for n in counts.values()), "the second instance replayed what the first had saved"
