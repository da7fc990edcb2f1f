"""What only Apache Kafka shows: transactions that hide aborted records, a broker that restarts with
its data, compaction of the checkpoint topic, and a rebalance while an instance checkpoints.

Each test here runs on Apache Kafka alone: the embedded broker shows aborted records to
``read_committed`` readers, keeps nothing across a restart and has not been shown to compact.
"""

from __future__ import annotations

import collections
import random
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from stream_lstm.offline.generator import temporal_stream
from stream_lstm.state.checkpoint import decode_checkpoint
from stream_lstm.state.topic_chunks import is_manifest_key, join_chunks, manifest_epoch, read_manifest
from stream_lstm.testing.apache_kafka import ApacheKafkaBroker
from tests.integration.conftest import checkpoint_of
from tests.integration.service_harness import (
    FAST_GROUP,
    ServiceProcess,
    TopicReader,
    broker_state,
    produce,
    produce_steadily,
    wait_for,
)

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


#: How long the "frozen" broker-restart case stops the service: past the group's session timeout
#: and poll interval (FAST_GROUP's), so that the group evicts it.
STALL_S = (
    2.0
    + max(
        int(FAST_GROUP[FAST_GROUP.index(flag) + 1])
        for flag in ("--session-timeout-ms", "--max-poll-interval-ms")
    )
    / 1000
)


def events_learned(service: ServiceProcess) -> int:
    """The events the service has learned, as /healthz says (0 while it does not answer)."""
    health = service.health()
    return int(health[1].get("events_learned", 0)) if health is not None else 0


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


@pytest.mark.parametrize("how", ["graceful", "sigkill", "frozen", "frozen, exactly-once"])
def test_the_service_rides_out_a_broker_restart_with_its_data(
    own_apache_kafka: ApacheKafkaBroker, group_id: str, tmp_path: Path, kafka_client: str, how: str
) -> None:
    """Mid-stream the broker goes away (stopped, or SIGKILLed) and comes back with its data:
    /healthz and stream_lstm_broker_connected show the outage, and afterwards every event has a
    prediction (exactly one, read committed, with --exactly-once) and was learned exactly once.

    "frozen": the service also stalls past the group's poll interval during the outage (as a
    flush or a commit that waits for the broker may), with events learned since its last
    checkpoint (one is written after 400 events, none after that until the outage): the group
    takes its partitions, which come back from that checkpoint, and the weights must go back too.
    """
    kafka = own_apache_kafka
    topics = named_topics(kafka, input_partitions=2)
    events = list(temporal_stream(1200, n_keys=12, seed=21))
    frozen = how.startswith("frozen")
    exactly_once = how.endswith("exactly-once")
    # Frozen: one checkpoint at 400-463 events (batches of 64), then none until the outage.
    every, interval = ("400", "3600") if frozen else ("100", "1")
    service = ServiceProcess(
        kafka.bootstrap_servers,
        topics,
        group_id,
        tmp_path,
        "--checkpoint-every",
        every,
        "--checkpoint-interval",
        interval,
        "--kafka-client",
        kafka_client,
        *(["--exactly-once"] if exactly_once else []),
    )
    reader: TopicReader | None = None
    try:
        service.start()
        produce(kafka.bootstrap_servers, topics["input"], events[:600])
        reader = TopicReader(kafka.bootstrap_servers, topics["output"], read_committed=exactly_once)
        if frozen:  # with --exactly-once, what came since the checkpoint is not committed yet
            wait_for(lambda: events_learned(service) >= 600, 90, "the events before the outage learned")
        else:
            reader.read_until(lambda r: len(r) >= 600, 90, "predictions before the outage")
        service.wait_ready()
        if how == "sigkill":
            kafka.kill()
        else:
            kafka.stop()
        if frozen:
            assert service.process is not None
            service.process.send_signal(signal.SIGSTOP)
            time.sleep(STALL_S)  # the stall itself, not a wait for something
            service.process.send_signal(signal.SIGCONT)
        wait_for(
            lambda: (h := service.health()) is not None and h[0] == 503, 60, "/healthz to report not ready"
        )
        assert service.metric("stream_lstm_broker_connected") == 0
        service.assert_alive()
        kafka.start()
        service.wait_ready(timeout=120, also=lambda: broker_state(kafka))
        assert service.metric("stream_lstm_broker_connected") == 1
        if frozen and kafka_client == "confluent":
            # librdkafka leaves the group when the poll interval passes: the partitions were lost.
            wait_for(lambda: "lost [(" in service.log(), 60, service.quoting_log("the partitions lost"))
        produce(kafka.bootstrap_servers, topics["input"], events[600:])
        wait_for(
            lambda: events_learned(service) >= len(events),
            120,
            service.quoting_log("every event learned after the outage"),
        )
        service.assert_alive()
        assert service.terminate() < 10  # its last checkpoint flushes (or commits) what is left
        reader.close()
        # A fresh connection.
        reader = TopicReader(kafka.bootstrap_servers, topics["output"], read_committed=exactly_once)
        reader.read_until(lambda r: len(set(predictions_by_offset(r))) >= len(events), 60, "every prediction")
        counts = predictions_by_offset(reader.read())
    finally:
        service.cleanup()
        if reader is not None:
            reader.close()

    ends = partition_ends(kafka.bootstrap_servers, topics["input"])
    assert set(counts) == {(p, o) for p, end in ends.items() for o in range(end)}  # nothing lost
    if exactly_once:
        assert {offset: n for offset, n in counts.items() if n != 1} == {}  # nor published twice
    final = checkpoint_of(tmp_path)
    for partition, end in ends.items():
        assert final.processed[(topics["input"], partition)] == end  # nothing learned twice
    assert final.evaluator.models["lstm"].events_learned == final.evaluator.events == len(events)


@dataclass(frozen=True)
class TopicRead:
    """What a reader of a topic gets from its beginning: records, bytes, and the live part of them."""

    records: int
    bytes: int
    live_keys: frozenset[bytes]
    live_bytes: int  # of the latest value of each live key: what compaction must keep


def read_topic(bootstrap: str, topic: str) -> TopicRead:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    partition = TopicPartition(topic, 0)
    latest: dict[bytes, int | None] = {}  # key -> size of its latest value (None: a tombstone)
    records = size = 0
    try:
        consumer.assign([partition])
        end = consumer.end_offsets([partition])[partition]
        consumer.seek_to_beginning()
        deadline = time.monotonic() + 30
        while consumer.position(partition) < end and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                for record in batch:
                    records += 1
                    value = len(record.value) if record.value is not None else None
                    size += len(record.key) + (value or 0)
                    latest[record.key] = value
        assert consumer.position(partition) >= end, f"could not read {topic} to its end"
    finally:
        consumer.close()
    live = {key: value for key, value in latest.items() if value is not None}
    return TopicRead(records, size, frozenset(live), sum(len(key) + value for key, value in live.items()))


def test_the_checkpoint_topic_stays_bounded_under_compaction(
    apache_kafka: ApacheKafkaBroker, group_id: str, tmp_path: Path
) -> None:
    """Many checkpoints into a topic with small segments and a low dirty ratio: what a reader gets
    stays near the size of the live checkpoints however many were written, and a new instance
    resumes from those alone."""
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
    flags = ("--checkpoint-topic", store_topic, "--checkpoint-every", "25", "--checkpoint-interval", "1")
    flags += ("--batch-size", "16")  # a checkpoint after almost every batch: many to compact
    first = ServiceProcess(kafka.bootstrap_servers, topics, group_id, tmp_path, *flags)
    second = ServiceProcess(kafka.bootstrap_servers, topics, group_id, tmp_path, *flags)
    events = list(temporal_stream(5000, n_keys=16, seed=5))
    reader = TopicReader(kafka.bootstrap_servers, topics["output"])
    reads: list[tuple[int, TopicRead]] = []  # (records written so far, what a reader got then)

    def bounded() -> TopicRead | None:
        # Segments older than 200 ms are the cleaner's; the newest, active one never is, and
        # holds the last checkpoint's records: what a reader gets is the live checkpoints, their
        # tombstones (kept delete.retention.ms) and that segment.
        now = read_topic(kafka.bootstrap_servers, store_topic)
        return now if now.bytes <= 3 * now.live_bytes else None

    def stream_through(service: ServiceProcess, starts: range) -> None:
        """Give ``service`` the events from each of ``starts`` in turn (500 at a time), and after
        each wait until it predicted them and compaction bounds the topic again."""
        for start in starts:
            end = start + 500
            produce(kafka.bootstrap_servers, topics["input"], events[start:end])
            reader.read_until(lambda r, end=end: len(r) >= end, 120, f"{end} predictions")
            service.assert_alive()
            written = partition_ends(kafka.bootstrap_servers, store_topic)[0]
            reads.append((written, wait_for(bounded, 90, f"compaction after {written} checkpoint records")))

    try:
        first.start()
        stream_through(first, range(0, 2500, 500))
        assert first.terminate() < 10
        before_second = wait_for(bounded, 90, "compaction after the first instance stopped")

        # The new instance reads only those, and goes on where the first stopped.
        second.start()
        stream_through(second, range(2500, 5000, 500))
        assert second.terminate() < 10
        counts = predictions_by_offset(reader.read())
    finally:
        first.cleanup()
        second.cleanup()
        reader.close()
    print("checkpoint topic, records written -> (records, bytes, live bytes) a reader gets:")
    for written, read in reads:
        print(f"  {written:6d} -> ({read.records}, {read.bytes}, {read.live_bytes})")
    written_last, last = reads[-1]
    assert written_last > 10 * last.records, "too few checkpoints to show compaction"
    # Bounded: the tenth read, after five times the first's checkpoints, is no larger than it
    # allows for (the live checkpoints grew with the keys learned, so compare with those).
    first_read = reads[0][1]
    assert last.bytes <= 3 * last.live_bytes and last.live_bytes <= 2 * first_read.live_bytes + 4096
    assert before_second.bytes <= 3 * before_second.live_bytes
    assert "continuing at offset" in second.log()
    assert not (tmp_path / "checkpoints").exists()
    assert len(counts) == len(events)
    assert all(n == 1 for n in counts.values()), "the second instance replayed what the first had saved"


class CheckpointWatch:
    """Follows a checkpoint topic from its beginning as a store reads it: each partition's
    checkpoints in the order written, with the stale ones (a lower epoch than one read before,
    which a store ignores) apart."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=0
        )
        self.partition = TopicPartition(topic, 0)
        self.consumer.assign([self.partition])
        self.consumer.seek_to_beginning()
        self.view: dict[str, bytes] = {}
        #: Per partition checkpoint name: (instance, offset, learned, epoch) of each one a store takes.
        self.taken: dict[str, list[tuple[str, int, int, int]]] = collections.defaultdict(list)
        #: The same of each stale one, which a store ignores.
        self.stale: dict[str, list[tuple[str, int, int, int]]] = collections.defaultdict(list)
        #: Per name, the epoch of every manifest, in the order written (compaction keeps the last).
        self.epochs: dict[str, list[int]] = collections.defaultdict(list)
        #: Partition manifests, and partition records of any kind, since the last manifest of the
        #: instance "a" (which ends its checkpoints).
        self.partitions_since_a = 0
        self.partition_records_since_a = 0
        self.checkpoints_of_a = 0  # manifests of the instance "a": its whole checkpoints

    def read(self, timeout_ms: int = 20) -> list[str]:
        """Read what is new; the keys of the records in it that are not tombstones."""
        keys = []
        for batch in self.consumer.poll(timeout_ms=timeout_ms).values():
            for record in batch:
                key = record.key.decode()
                if record.value is None:
                    self.view.pop(key, None)
                    continue
                keys.append(key)
                if key == "instances/a":
                    self.partitions_since_a = self.partition_records_since_a = 0
                    self.checkpoints_of_a += 1
                if key.startswith("partitions/"):
                    self.partition_records_since_a += 1
                if not key.startswith("partitions/") or not is_manifest_key(key):
                    self.view[key] = record.value
                    continue
                self.partitions_since_a += 1
                epoch = manifest_epoch(record.value)
                self.epochs[key].append(epoch)
                held = self.view.get(key)
                joined = {**self.view, key: record.value}
                state = decode_checkpoint(join_chunks(joined, key, read_manifest(joined, key, key), key), key)
                entry = (state.instance, state.offset, state.events, epoch)
                if held is not None and epoch < manifest_epoch(held):
                    self.stale[key].append(entry)
                else:
                    self.view[key] = record.value
                    self.taken[key].append(entry)
        return keys

    def read_to_end(self) -> None:
        end = self.consumer.end_offsets([self.partition])[self.partition]
        wait_for(
            lambda: self.read(200) is not None and self.consumer.position(self.partition) >= end,
            30,
            "the end",
        )

    def close(self) -> None:
        self.consumer.close()


def test_a_rebalance_while_an_instance_is_mid_checkpoint_moves_state_once(
    apache_kafka: ApacheKafkaBroker, group_id: str, tmp_path: Path, kafka_client: str
) -> None:
    """Instance a is frozen (SIGSTOP) amid writing its partitions' checkpoints; b joins and takes
    every partition over; a wakes up once b has checkpointed them all, and finishes its write.
    Under read_committed every offset has one prediction; the checkpoints a store takes never go
    back, each counting as many events as its offset; a's stale writes are refused, or, if one
    slipped in past the check, ignored by readers and overwritten for compaction."""
    kafka = apache_kafka
    topics = named_topics(kafka, input_partitions=4)
    store_topic = f"ckpt-{uuid.uuid4().hex[:10]}"
    flags = ("--exactly-once", "--checkpoint-topic", store_topic, "--batch-size", "16")
    flags += ("--checkpoint-every", "100", "--checkpoint-interval", "1", "--kafka-client", kafka_client)
    a = ServiceProcess(kafka.bootstrap_servers, topics, group_id, tmp_path, "--instance-id", "a", *flags)
    b = ServiceProcess(kafka.bootstrap_servers, topics, group_id, tmp_path, "--instance-id", "b", *flags)
    events = list(temporal_stream(4000, n_keys=32, seed=23))
    names = [f"partitions/{topics['input']}/{p}" for p in range(4)]
    stop = threading.Event()
    reader = TopicReader(kafka.bootstrap_servers, topics["output"], read_committed=True)
    watch: CheckpointWatch | None = None
    try:
        a.start()
        a.wait_ready(90)
        producer = produce_steadily(kafka.bootstrap_servers, topics["input"], events, 250, stop)
        wait_for(lambda: "assigned [('" in a.log(), 60, "a to own the partitions")
        watch = CheckpointWatch(kafka.bootstrap_servers, store_topic)

        def frozen_mid_checkpoint() -> bool:
            """Freeze a on a partition's record; keep it frozen while some of its partitions'
            checkpoints of that round are still to be written (and one round was whole before,
            so that b has a's checkpoints to continue from)."""
            if not any(key.startswith("partitions/") for key in watch.read()) or watch.checkpoints_of_a < 2:
                return False
            a.process.send_signal(signal.SIGSTOP)
            watch.read_to_end()
            if watch.partition_records_since_a > 0 and watch.partitions_since_a < len(names):
                return True
            a.process.send_signal(signal.SIGCONT)
            return False

        wait_for(frozen_mid_checkpoint, 120, "a to be frozen mid-checkpoint")
        frozen_after = watch.partitions_since_a
        b.start()

        def b_checkpointed_every_partition() -> bool:
            watch.read()
            return all(watch.taken[name] and watch.taken[name][-1][0] == "b" for name in names)

        wait_for(b_checkpointed_every_partition, 90, "b to take over and checkpoint every partition")
        a.process.send_signal(signal.SIGCONT)
        producer.join(timeout=120)
        assert not producer.is_alive()
        reader.read_until(lambda r: len(r) >= len(events), 180, "every committed prediction")
        assert b.terminate() < 10
        a.assert_alive()
        assert a.terminate() < 10
        counts = predictions_by_offset(reader.read())
        watch.read_to_end()
    finally:
        stop.set()
        if a.process is not None and a.process.poll() is None:
            a.process.send_signal(signal.SIGCONT)  # so that the cleanup's kill can end it
        a.cleanup()
        b.cleanup()
        reader.close()
        if watch is not None:
            watch.close()

    refused = a.log().count("letting it go")
    print(
        f"a frozen after {frozen_after} of {len(names)} partition checkpoints; afterwards {refused} of its "
        f"writes refused, {sum(map(len, watch.stale.values()))} slipped in and were ignored"
    )
    # Not asserted: refused + slipped >= 1. Whether a has a partition left to write when it wakes
    # depends on which of them had new events in the frozen round; the unit tests of the fence
    # (tests/unit/*/test_stale_owner.py) pin it, and without the fence this test's "went back"
    # assertion below fails.
    ends = partition_ends(kafka.bootstrap_servers, topics["input"])
    assert set(counts) == {(p, o) for p, end in ends.items() for o in range(end)}
    assert {key: n for key, n in counts.items() if n != 1} == {}
    assert re.search(r"continuing at offset \d+ with \d+ keys \(checkpoint of instance a\)", b.log())
    for name in names:
        taken = watch.taken[name]
        offsets = [offset for _, offset, _, _ in taken]
        assert offsets == sorted(offsets), f"{name}: a checkpoint a store takes went back: {taken}"
        assert all(offset == learned for _, offset, learned, _ in taken), f"{name}: {taken}"
        assert offsets[-1] == ends[int(name.rsplit("/", 1)[1])]
        assert watch.epochs[name][-1] == max(watch.epochs[name]), f"{name}: compaction would keep a stale one"
