"""A StreamService on a scripted Kafka client and a store in memory (stream_lstm.testing), run to the end."""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_evaluator
from stream_lstm.kafka.interface import KafkaSettings, Message, Partition
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.messages.events import encode_event
from stream_lstm.models.protocols import trained_model
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.service.stream_service import ServiceSettings, StreamService
from stream_lstm.state.store import InstanceState
from stream_lstm.telemetry.metrics import Telemetry
from stream_lstm.testing import MemoryStore, ScriptedKafka

TOPIC = "in"
OUTPUT = "out"
PARTITIONS = [(TOPIC, 0), (TOPIC, 1)]
BATCH = 16


def stream(events_per_partition: int, *, seed: int = 11) -> dict[Partition, list[Message]]:
    """A generated multi-key stream, its events dealt to two partitions in turn."""
    events = list(temporal_stream(2 * events_per_partition, n_keys=6, seed=seed))
    return {
        partition: [
            Message(TOPIC, partition[1], offset, event.key.encode(), encode_event(event), None)
            for offset, event in enumerate(events[partition[1] :: 2])
        ]
        for partition in PARTITIONS
    }


def run_service(
    kafka: ScriptedKafka,
    store: MemoryStore,
    *,
    learner_process: bool = False,
    checkpoint_every: int = 10**9,
    instance_id: str = "one",
    exactly_once: bool = False,
    started: Callable[[StreamService], None] | None = None,
) -> StreamService:
    """Run a service on ``kafka`` and ``store`` until the stream is read; return it, stopped.

    Checkpoints come every ``checkpoint_every`` messages (by default only in rebalances and at
    the stop), never by time. ``started`` is given the service before it runs.
    """
    settings = ServiceSettings(
        kafka=KafkaSettings("scripted:9092", TOPIC, OUTPUT, "dead", "group", exactly_once=exactly_once),
        checkpoint_dir=Path("unused"),  # the store is given
        batch_size=BATCH,
        checkpoint_every=checkpoint_every,
        checkpoint_interval_s=10**9,
        instance_id=instance_id,
        learner_process=learner_process,
        torch_threads=torch.get_num_threads(),  # as here: the answers are then equal to the bit
    )

    def new_evaluator() -> PrequentialEvaluator:
        return build_evaluator(
            ["lstm", "logreg", "no_change", "mix"], lstm={"hidden_size": 8, "device": "cpu"}
        )

    service = StreamService(
        settings, new_evaluator=new_evaluator, telemetry=Telemetry(), kafka_factory=kafka.connect, store=store
    )
    kafka.when_done = service.stop
    if started is not None:
        started(service)
    service.run()
    assert not kafka.timed_out, "the stream was not done within the client's deadline"
    return service


def predictions(kafka: ScriptedKafka) -> dict[tuple[int, int], list[dict[str, float]]]:
    """The delivered predictions by (partition, offset) of their input."""
    by_offset = collections.defaultdict(list)
    for record in kafka.delivered_to(OUTPUT):
        by_offset[(record["source"]["partition"], record["source"]["offset"])].append(record["predictions"])
    return by_offset


def lstm_of(state: InstanceState) -> LSTMLearner:
    learner = trained_model(state.evaluator.models)
    assert isinstance(learner, LSTMLearner)
    return learner


def assert_learned_exactly_once(store: MemoryStore, kafka: ScriptedKafka, instance_id: str = "one") -> None:
    """Each partition's checkpoint is at its end with every event counted once, and the saved
    learner itself (its scores and the LSTM's own count) learned as many events as the offsets
    hold: no event learned twice, none skipped."""
    total = 0
    for partition in PARTITIONS:
        saved = store.load_partition(partition)
        assert saved is not None
        assert saved.offset == len(kafka.messages[partition])
        assert saved.events + saved.dead_letters == saved.offset  # every event learned once, none twice
        total += saved.events
    instance = store.load_instance(instance_id)
    assert instance is not None
    assert instance.evaluator.events == total
    assert lstm_of(instance).events_seen == total


def delivered_offsets(kafka: ScriptedKafka) -> Mapping[tuple[int, int], int]:
    """How many delivered predictions each input offset has."""
    return {source: len(copies) for source, copies in predictions(kafka).items()}
