"""Two `stream-lstm run` instances in one group on a 4-partition topic; one is SIGKILLed mid-stream.

The survivor must take the dead instance's partitions over from the shared checkpoint store:
afterwards every input offset has a prediction, and per partition the count of learned events
equals the partition's offsets (the killed instance's unsaved work redone once, never twice).
"""

from __future__ import annotations

import collections
import re
import threading
import uuid
from pathlib import Path

import pytest

from stream_lstm.offline.generator import temporal_stream
from stream_lstm.state.directory_store import CheckpointStore, DirectoryStore
from stream_lstm.state.signing import CheckpointSigner
from stream_lstm.state.topic_store import KafkaTopicStore
from tests.integration.conftest import Broker
from tests.integration.service_harness import ServiceProcess, TopicReader, produce, produce_steadily, wait_for

pytestmark = pytest.mark.slow

PARTITIONS = 4
CHECKPOINT_KEY = "a-checkpoint-key-of-at-least-32-bytes-for-the-tests"
EVENTS = 6000


def assigned_partitions(service: ServiceProcess) -> bool:
    return "assigned [('" in service.log()


@pytest.mark.parametrize(
    ("kafka_client", "store_kind"),
    [
        ("kafka-python", "directory"),
        ("confluent", "directory"),
        ("kafka-python", "topic"),
        ("kafka-python", "signed-topic"),
    ],
    indirect=["kafka_client"],
)
def test_survivor_takes_over_the_killed_instances_partitions_and_learns_each_event_once(
    broker: Broker, group_id: str, tmp_path: Path, kafka_client: str, store_kind: str
) -> None:
    """With the checkpoint store in a shared directory, or in a compacted topic (no shared disk),
    with or without signed checkpoints (``--checkpoint-key``)."""
    suffix = uuid.uuid4().hex[:10]
    topics = {"input": f"in-{suffix}", "output": f"out-{suffix}", "dead": f"dead-{suffix}"}
    broker.create_topics([topics["input"]], partitions=PARTITIONS)
    broker.create_topics([topics["output"], topics["dead"]], partitions=1)
    flags = ("--batch-size", "16", "--checkpoint-every", "200", "--checkpoint-interval", "1")
    flags += ("--kafka-client", kafka_client)
    store: CheckpointStore
    if store_kind == "signed-topic":
        flags += ("--checkpoint-topic", f"ckpt-{suffix}", "--checkpoint-key", CHECKPOINT_KEY)
        signer = CheckpointSigner(CHECKPOINT_KEY.encode())
        store = KafkaTopicStore(broker.bootstrap_servers, f"ckpt-{suffix}", signer=signer)
    elif store_kind == "topic":
        flags += ("--checkpoint-topic", f"ckpt-{suffix}")
        store = KafkaTopicStore(broker.bootstrap_servers, f"ckpt-{suffix}")
    else:
        store = DirectoryStore(tmp_path / "checkpoints")
    doomed = ServiceProcess(
        broker.bootstrap_servers, topics, group_id, tmp_path, "--instance-id", "a", *flags
    )
    survivor = ServiceProcess(
        broker.bootstrap_servers, topics, group_id, tmp_path, "--instance-id", "b", *flags
    )
    stop_producing = threading.Event()
    reader = TopicReader(broker.bootstrap_servers, topics["output"])
    try:
        doomed.start()
        survivor.start()
        doomed.wait_ready()
        survivor.wait_ready()
        wait_for(
            lambda: assigned_partitions(doomed) and assigned_partitions(survivor),
            60,
            lambda: f"both instances to own partitions; a's log:\n{doomed.log()}\nb's log:\n{survivor.log()}",
        )
        events = list(temporal_stream(EVENTS, n_keys=64, seed=17))
        half = EVENTS // 2
        producer = produce_steadily(
            broker.bootstrap_servers, topics["input"], events[:half], 600, stop_producing
        )

        def doomed_partitions() -> list[int]:
            states = [store.load_partition(p) for p in store.partitions()]
            return [s.partition for s in states if s is not None and s.instance == "a" and s.offset > 100]

        taken_over = wait_for(doomed_partitions, 90, "the instance to be killed to checkpoint its partitions")
        doomed.kill()  # mid-stream, between two of its checkpoints
        producer.join(timeout=60)
        assert not producer.is_alive()
        # The second half comes after the kill, so every partition has work for the survivor.
        produce(broker.bootstrap_servers, topics["input"], events[half:])

        reader.read_until(
            lambda r: len({(x["source"]["partition"], x["source"]["offset"]) for x in r}) >= EVENTS,
            120,
            "a prediction for every input offset",
        )
        assert survivor.terminate() < 10
        records = reader.read()
        ends = input_offsets(broker.bootstrap_servers, topics["input"])
        states = {partition: store.load_partition((topics["input"], partition)) for partition in ends}
    finally:
        stop_producing.set()
        doomed.cleanup()
        survivor.cleanup()
        reader.close()
        store.close()
    if store_kind == "topic":
        assert not (tmp_path / "checkpoints").exists()  # nothing went to a shared disk

    assert len(ends) == PARTITIONS  # every partition got events
    predicted = collections.defaultdict(set)
    for record in records:
        predicted[record["source"]["partition"]].add(record["source"]["offset"])
    for partition, end in ends.items():
        assert predicted[partition] == set(range(end)), f"partition {partition}"
        state = states[partition]
        assert state is not None
        assert state.offset == end
        assert state.events == end, f"partition {partition}: learned {state.events} of {end} events"
        assert state.instance == "b"  # the survivor owns and saved every partition in the end
        assert state.keys and state.key_state["lstm"]["keys"]  # key states travel with it
    # The survivor continued the killed instance's key states, not fresh ones.
    continued = re.findall(
        r"partition \S+:(\d+): continuing at offset \d+ with (\d+) keys \(checkpoint of instance a\)",
        survivor.log(),
    )
    assert {int(p) for p, _ in continued} >= set(taken_over)
    assert all(int(keys) > 0 for _, keys in continued)


def input_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Per partition, the next offset after the last input record (read from the topic itself)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    consumer.seek_to_beginning()
    seen: dict[int, list[int]] = collections.defaultdict(list)

    def read_all() -> bool:
        for tp, records in consumer.poll(timeout_ms=200, max_records=10_000).items():
            seen[tp.partition].extend(record.offset for record in records)
        return sum(map(len, seen.values())) >= EVENTS

    try:
        wait_for(read_all, 60, "every input record")
    finally:
        consumer.close()
    for partition, offsets in seen.items():
        assert offsets == list(range(len(offsets))), f"input partition {partition} has gaps"
    return {partition: len(offsets) for partition, offsets in seen.items()}
