"""The checkpoint store in a compacted Kafka topic, on both test brokers."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream_lstm.errors import CheckpointError, StaleCheckpointError
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.kafka.broker import EmbeddedBroker, free_port
from stream_lstm.kafka.interface import KAFKA_CLIENTS
from stream_lstm.messages.events import Event
from stream_lstm.state.directory_store import InstanceState, PartitionState
from stream_lstm.state.topic_store import KafkaTopicStore
from tests.integration.conftest import Broker


@pytest.fixture
def store_topic() -> str:
    return f"ckpt-{uuid.uuid4().hex[:12]}"


def raw_records(bootstrap: str, topic: str) -> list[tuple[str, bytes | None]]:
    """Every record of the store topic, in order, as (key, value)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    end = consumer.end_offsets([partition])[partition]
    records: list[tuple[str, bytes | None]] = []
    deadline = time.monotonic() + 30
    try:
        while True:
            batch = consumer.poll(timeout_ms=100)
            records += [(r.key.decode(), r.value) for rs in batch.values() for r in rs]
            if consumer.position(partition) >= end and not batch:
                return records
            assert time.monotonic() < deadline, "reading the store topic timed out"
    finally:
        consumer.close()


def key_states(size: int, seed: int = 0) -> dict[str, Any]:
    """Key states that take ``size`` bytes of a checkpoint, give or take its header: one LSTM key
    whose input window holds ``size / 4`` random floats."""
    window = np.random.default_rng(seed).standard_normal((1, 1, size // 4)).astype(np.float32)
    return {
        "lstm": {
            "keys": ["k"],
            "h0": np.zeros((1, 1), np.float32),
            "c0": np.zeros((1, 1), np.float32),
            "window": window,
            "window_len": np.ones(1, np.int64),
            "prev_label": np.full(1, -1, np.int8),
            "last_ts": np.full(1, np.nan),
            "feature_columns": {},
        }
    }


def instance_state(instance: str, events: int) -> InstanceState:
    evaluator = PrequentialEvaluator(build_models(["no_change"]))
    evaluator.process([Event(key="k", label=1)] * events)
    return InstanceState(evaluator=evaluator, instance=instance)


def test_checkpoints_written_by_one_store_are_read_by_another(
    broker: Broker, store_topic: str, kafka_client: str
) -> None:
    """Written through one client library, read through the other: the store follows
    ``--kafka-client`` and both read and write the same records."""
    other = next(client for client in KAFKA_CLIENTS if client != kafka_client)
    writer = KafkaTopicStore(broker.bootstrap_servers, store_topic, client=kafka_client)
    reader = KafkaTopicStore(broker.bootstrap_servers, store_topic, client=other)
    try:
        assert reader.load_partition(("in", 0)) is None and reader.partitions() == []
        writer.save_partition(
            PartitionState(topic="in", partition=2, offset=7, events=7, keys=["a"], instance="x")
        )
        writer.save_instance(instance_state("x", 3))
        time.sleep(0.01)  # distinct write times for the "newest" order below
        writer.save_instance(instance_state("y", 5))

        state = reader.load_partition(("in", 2))
        assert (state.offset, state.events, state.keys, state.instance) == (7, 7, ["a"], "x")
        assert reader.partitions() == [("in", 2)]
        assert reader.has_instance("x") and not reader.has_instance("z")
        assert reader.load_instance("x").evaluator.events == 3
        assert reader.newest_other_instance("z").instance == "y"  # the most recently written
        assert reader.newest_other_instance("y").instance == "x"  # never one's own

        writer.save_partition(PartitionState(topic="in", partition=2, offset=9, instance="x"))
        assert reader.load_partition(("in", 2), latest=False).offset == 7  # its view, unread
        reader.refresh()
        assert reader.load_partition(("in", 2), latest=False).offset == 9  # read by refresh
        writer.save_partition(PartitionState(topic="in", partition=2, offset=11, instance="x"))
        assert reader.load_partition(("in", 2)).offset == 11  # a load catches up itself
    finally:
        writer.close()
        reader.close()


def test_a_checkpoint_larger_than_a_message_is_chunked_and_old_versions_are_tombstoned(
    broker: Broker, store_topic: str
) -> None:
    store = KafkaTopicStore(broker.bootstrap_servers, store_topic, chunk_bytes=100_000)
    try:
        store.save_partition(PartitionState(topic="in", partition=0, offset=1, key_state=key_states(350_000)))
        first = raw_records(broker.bootstrap_servers, store_topic)
        first_chunks = [key for key, _ in first if "@" in key]
        assert len(first_chunks) == 4  # 350 kB and a header in chunks of 100 kB
        assert all(len(value) <= 100_000 for _, value in first)

        small = key_states(20, seed=1)
        store.save_partition(PartitionState(topic="in", partition=0, offset=2, key_state=small))
        second = raw_records(broker.bootstrap_servers, store_topic)[len(first) :]
        tombstoned = {key for key, value in second if value is None}
        assert tombstoned == set(first_chunks)  # compaction can drop the old version entirely

        fresh = KafkaTopicStore(broker.bootstrap_servers, store_topic)
        try:
            loaded = fresh.load_partition(("in", 0)).key_state["lstm"]["window"]
            np.testing.assert_array_equal(loaded, small["lstm"]["window"])
        finally:
            fresh.close()
    finally:
        store.close()


def die_at_the_manifest(
    store: KafkaTopicStore, state: PartitionState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Save ``state`` as a writer killed after its chunks and before its manifest would."""
    send = store._send

    def chunks_only(records: list[tuple[str, bytes | None]], name: str) -> None:
        if any("@" not in key for key, _ in records):
            raise CheckpointError("killed")
        send(records, name)

    monkeypatch.setattr(store, "_send", chunks_only)
    with pytest.raises(CheckpointError):
        store.save_partition(state)
    monkeypatch.undo()


def test_a_writer_dying_before_its_manifest_leaves_the_previous_version(
    broker: Broker, store_topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = KafkaTopicStore(broker.bootstrap_servers, store_topic, chunk_bytes=1000)
    try:
        store.save_partition(
            PartitionState(topic="in", partition=0, offset=10, key_state=key_states(3000, seed=2))
        )
        new = PartitionState(topic="in", partition=0, offset=20, key_state=key_states(3000, seed=3))
        die_at_the_manifest(store, new, monkeypatch)

        reader = KafkaTopicStore(broker.bootstrap_servers, store_topic)
        try:
            assert reader.load_partition(("in", 0)).offset == 10  # its chunks are there, unused
            store.save_partition(PartitionState(topic="in", partition=0, offset=30))
            reader.load_partition(("in", 0))
            live_chunks = [key for key in reader._latest if "@" in key]
            assert len(live_chunks) == 1  # the orphans and the old version were tombstoned
            assert reader.load_partition(("in", 0)).offset == 30
        finally:
            reader.close()
    finally:
        store.close()


def test_orphaned_chunks_are_swept_once_they_are_old_enough(
    broker: Broker, store_topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that dies between its chunks and its manifest, and never writes that name again
    (its partition moved on), leaves chunks no manifest names: another store's sweep removes them
    once they are older than the grace, and never the live version's."""
    writer = KafkaTopicStore(broker.bootstrap_servers, store_topic, chunk_bytes=1000)
    try:
        writer.save_partition(
            PartitionState(topic="in", partition=0, offset=10, key_state=key_states(2500, seed=4))
        )
        writer.save_partition(
            PartitionState(topic="in", partition=1, offset=5, key_state=key_states(2500, seed=5))
        )
        dead = PartitionState(topic="in", partition=0, offset=20, key_state=key_states(2500, seed=6))
        die_at_the_manifest(writer, dead, monkeypatch)
    finally:
        writer.close()

    def orphans_in(store: KafkaTopicStore) -> set[str]:
        live = {name: store._manifest(name)["version"] for name in ("partitions/in/0", "partitions/in/1")}
        chunks = [key.split("@") for key in store._latest if "@" in key]
        return {f"{name}@{rest}" for name, rest in chunks if rest.split("/")[0] != live[name]}

    patient = KafkaTopicStore(broker.bootstrap_servers, store_topic)  # the default grace: an hour
    try:
        patient.refresh()  # catches up, and sweeps: nothing is an hour old yet
        orphans = orphans_in(patient)
        assert len(orphans) >= 3  # the dead write's chunks (over 2,500 bytes in chunks of 1,000)
        assert patient.collect_orphans() == 0 and orphans_in(patient) == orphans
    finally:
        patient.close()
    sweeper = KafkaTopicStore(broker.bootstrap_servers, store_topic, orphan_grace_s=0.0)
    try:
        sweeper._catch_up()
        assert orphans_in(sweeper) == orphans
        assert sweeper.collect_orphans() == len(orphans)
    finally:
        sweeper.close()
    reader = KafkaTopicStore(broker.bootstrap_servers, store_topic)
    try:
        reader.refresh()
        assert orphans_in(reader) == set()  # tombstoned in the topic, not only in one view
        assert reader.load_partition(("in", 0)).offset == 10
        assert reader.load_partition(("in", 1)).offset == 5
    finally:
        reader.close()


def test_a_damaged_chunk_is_skipped_and_counted_never_a_wrong_state(
    broker: Broker, store_topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    rejections: list[tuple[str, str]] = []
    store = KafkaTopicStore(
        broker.bootstrap_servers, store_topic, on_rejected=lambda *rejection: rejections.append(rejection)
    )
    try:
        store.save_partition(PartitionState(topic="in", partition=0, offset=5))
        chunk_key, chunk = next(
            (key, value) for key, value in raw_records(broker.bootstrap_servers, store_topic) if "@" in key
        )
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        damaged = bytes(b ^ 0x01 for b in chunk)  # same size, other bytes: only the hash can tell
        producer.send(store_topic, key=chunk_key.encode(), value=damaged).get(timeout=10)
        producer.close()
        with caplog.at_level(logging.WARNING, logger="stream_lstm.state.topic_screen"):
            assert store.load_partition(("in", 0)) is None  # no earlier version to fall back to
        assert "partitions/in/0 in Kafka topic" in caplog.text and "is damaged" in caplog.text
        assert rejections == [("damaged", "partitions/in/0")]
    finally:
        store.close()


def test_an_unreachable_cluster_is_a_clear_error() -> None:
    started = time.monotonic()
    with pytest.raises(CheckpointError, match="cannot open the checkpoint topic"):
        KafkaTopicStore(f"127.0.0.1:{free_port()}", "ckpt", connect_timeout_s=1.0)
    assert time.monotonic() - started < 60


def test_two_writers_of_one_name_never_leave_a_manifest_without_its_chunks(
    broker: Broker, store_topic: str
) -> None:
    """A partition's old owner may still be saving it while the new owner does: whichever
    manifest lands last must find its chunks."""
    import threading

    new_owner = KafkaTopicStore(broker.bootstrap_servers, store_topic, chunk_bytes=1000)
    old_owner = KafkaTopicStore(broker.bootstrap_servers, store_topic, chunk_bytes=1000)
    try:
        new_owner.save_partition(
            PartitionState(topic="in", partition=0, offset=1, key_state=key_states(3000, seed=7))
        )
        assert old_owner.load_partition(("in", 0)).offset == 1
        at_manifest, go_on = threading.Event(), threading.Event()
        send = old_owner._send

        def pause_before_the_manifest(records: list[tuple[str, bytes | None]], name: str) -> None:
            if any("@" not in key and value is not None for key, value in records):
                at_manifest.set()
                go_on.wait(30)
            send(records, name)

        old_owner._send = pause_before_the_manifest  # type: ignore[method-assign]
        late = threading.Thread(
            target=old_owner.save_partition,
            args=(PartitionState(topic="in", partition=0, offset=2, key_state=key_states(3000, seed=8)),),
        )
        late.start()
        assert at_manifest.wait(30)  # its chunks are in the topic, its manifest not yet
        assert new_owner.load_partition(("in", 0)).offset == 1  # sees those chunks, unnamed
        new_owner.save_partition(
            PartitionState(topic="in", partition=0, offset=3, key_state=key_states(3000, seed=9))
        )
        go_on.set()
        late.join(30)
        assert not late.is_alive()

        reader = KafkaTopicStore(broker.bootstrap_servers, store_topic)
        try:
            assert reader.load_partition(("in", 0)).offset == 2  # the last manifest, complete
        finally:
            reader.close()
    finally:
        new_owner.close()
        old_owner.close()


def test_a_load_from_the_view_needs_no_broker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What a rollback does after a Kafka error: it must not need the broker it may have lost."""
    own = EmbeddedBroker(log_path=tmp_path / "broker.log")
    own.start(timeout=30)
    try:
        store = KafkaTopicStore(own.bootstrap_servers, "ckpt", timeout_s=2.0)
        store.save_partition(PartitionState(topic="in", partition=0, offset=4))
        store.save_instance(instance_state("me", 2))
    finally:
        own.stop()
    try:
        assert store.load_partition(("in", 0), latest=False).offset == 4
        assert store.load_instance("me", latest=False).evaluator.events == 2
        started = time.monotonic()
        with pytest.raises(CheckpointError):
            store.load_partition(("in", 0))  # the latest needs the topic
        assert time.monotonic() - started < 30
    finally:
        store.close()


def test_a_topic_of_several_partitions_is_refused(broker: Broker, store_topic: str) -> None:
    """Chunks and manifests must keep their order, which only one partition guarantees."""
    broker.create_topics([store_topic], partitions=2)
    with pytest.raises(CheckpointError, match="needs exactly one"):
        KafkaTopicStore(broker.bootstrap_servers, store_topic, connect_timeout_s=5.0)


def test_a_stale_owners_checkpoint_is_refused_and_one_that_slips_in_is_ignored(
    broker: Broker, store_topic: str
) -> None:
    """Partition checkpoints carry their owner's epoch: a write below the topic's is refused, and
    a reader that has the later one ignores a stale manifest written after it anyway (the race
    between a writer's check and its write, which a topic cannot close)."""
    new_owner = KafkaTopicStore(broker.bootstrap_servers, store_topic)
    stale_owner = KafkaTopicStore(broker.bootstrap_servers, store_topic)
    reader = KafkaTopicStore(broker.bootstrap_servers, store_topic)
    try:
        stale_owner.save_partition(PartitionState(topic="in", partition=0, offset=10, instance="a", epoch=1))
        assert stale_owner.stored_epochs([("in", 0)]) == {("in", 0): 1}
        new_owner.save_partition(PartitionState(topic="in", partition=0, offset=30, instance="b", epoch=2))
        assert stale_owner.stored_epochs([("in", 0), ("in", 1)]) == {("in", 0): 2, ("in", 1): None}
        with pytest.raises(StaleCheckpointError, match="partitions/in/0"):
            stale_owner.save_partition(
                PartitionState(topic="in", partition=0, offset=20, instance="a", epoch=1)
            )
        assert reader.load_partition(("in", 0)).offset == 30

        # Around the check: the manifest lands after the new owner's.
        name = "partitions/in/0"
        stale_owner._save(
            name,
            PartitionState(topic="in", partition=0, offset=25, instance="a", epoch=1),
            epoch=1,
        )
        assert reader.load_partition(("in", 0)).offset == 30  # the reader keeps the later epoch

        def last_manifest_epoch() -> int:
            manifests = [
                value for key, value in raw_records(broker.bootstrap_servers, store_topic) if key == name
            ]
            return json.loads(manifests[-1])["epoch"]

        # Compaction keeps a key's last record, the stale one now: its new owner writes its own
        # manifest again when it next reads the topic, so that a reader after compaction gets it.
        assert last_manifest_epoch() == 1
        new_owner.refresh()
        assert last_manifest_epoch() == 2
        fresh = KafkaTopicStore(broker.bootstrap_servers, store_topic)  # reads the topic from its start
        try:
            assert fresh.load_partition(("in", 0)).offset == 30
        finally:
            fresh.close()
    finally:
        new_owner.close()
        stale_owner.close()
        reader.close()
