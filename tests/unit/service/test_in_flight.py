"""The service's batch in flight (LSTM in a process of its own), on a scripted Kafka client.

The real-broker tests (tests/integration) check the same service end to end; this client makes
a rebalance, or a failed produce, happen exactly while a batch is in flight.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch

from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.kafka.interface import KafkaIOError, KafkaSettings, Message, Partition
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.learner.placement import learners_kept_on_cpu
from stream_lstm.learner.process import LearnerProcessError
from stream_lstm.messages.events import encode_event
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.service.checkpointer import Checkpointer
from stream_lstm.service.stream_service import ServiceSettings, StreamService
from stream_lstm.state.directory_store import DirectoryStore
from stream_lstm.telemetry.metrics import Telemetry

TOPIC = "in"
PARTITIONS = [(TOPIC, 0), (TOPIC, 1)]
BATCH = 16


class ScriptedKafka:
    """Two partitions of events, polled one full batch at a time, alternating partitions.

    ``rebalance_at``: before that poll, the group takes every partition back and gives it
    again (positions go back to the committed offsets, as in Kafka). ``fail_produce_in_rebalance``:
    every produce fails while the partitions are being revoked.
    """

    def __init__(
        self, events_per_partition: int, *, rebalance_at: int | None = None, kill_child_at: int | None = None
    ) -> None:
        stream = list(temporal_stream(2 * events_per_partition, n_keys=6, seed=11))
        self.messages = {
            partition: [
                Message(TOPIC, partition[1], offset, event.key.encode(), encode_event(event), None)
                for offset, event in enumerate(stream[partition[1] :: 2])
            ]
            for partition in PARTITIONS
        }
        self.positions = dict.fromkeys(PARTITIONS, 0)
        self.committed_offsets: dict[Partition, int] = {}
        self.outputs: list[dict] = []
        self.rebalance_at = rebalance_at
        self.kill_child_at = kill_child_at
        self.killed_child: int | None = None
        self.fail_produce_in_rebalance = False
        self.failed_produces = 0
        self.polls = 0
        self.deadline = time.monotonic() + 60
        self.timed_out = False
        self.in_flight_at_rebalance = False
        self.service: StreamService | None = None
        self._revoking = False

    def connect(
        self,
        settings: KafkaSettings,
        *,
        on_assigned: Callable[[list[Partition]], None],
        on_revoked: Callable[[list[Partition]], None],
        on_lost: Callable[[list[Partition]], None],
    ) -> ScriptedKafka:
        self.on_assigned, self.on_revoked = on_assigned, on_revoked
        return self

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        assert self.service is not None
        if time.monotonic() > self.deadline:  # far more than the stream needs: something loops
            self.timed_out = True
            self.service.stop()
            return []
        if self.polls == self.kill_child_at:
            assert self.service.learner_process is not None and self.service.in_flight is not None
            self.killed_child = self.service.learner_process.pid
            os.kill(self.killed_child, signal.SIGKILL)
        if self.polls == 0:
            self.on_assigned(list(PARTITIONS))
        elif self.polls == self.rebalance_at:
            self.in_flight_at_rebalance = self.service.in_flight is not None
            self._revoking = True
            try:
                self.on_revoked(list(PARTITIONS))
            finally:
                self._revoking = False
            self.positions = {p: self.committed_offsets.get(p, 0) for p in PARTITIONS}
            self.on_assigned(list(PARTITIONS))
        partition = PARTITIONS[self.polls % 2]
        self.polls += 1
        if all(self.positions[p] >= len(self.messages[p]) for p in PARTITIONS):
            self.service.stop()
            return []
        if self.positions[partition] >= len(self.messages[partition]):
            partition = PARTITIONS[self.polls % 2]
        start = self.positions[partition]
        batch = self.messages[partition][start : start + max_records]
        self.positions[partition] = start + len(batch)
        return batch

    def seek(self, partition: Partition, offset: int) -> None:
        self.positions[partition] = offset

    def seek_to_committed(self, partition: Partition) -> None:
        self.positions[partition] = self.committed_offsets.get(partition, 0)

    def seek_to_beginning(self, partition: Partition) -> None:
        self.positions[partition] = 0

    def assignment(self) -> list[Partition]:
        return list(PARTITIONS)

    def committed(self, partition: Partition) -> int | None:
        return self.committed_offsets.get(partition)

    def lag(self) -> dict[Partition, int]:
        return {}

    def produce(self, topic: str, key: bytes | None, value: bytes, *, source: object = None) -> None:
        if self._revoking and self.fail_produce_in_rebalance:
            self.failed_produces += 1
            raise KafkaIOError("the broker is away (scripted)")
        if topic == "out":
            self.outputs.append(json.loads(value))

    def flush(self, timeout_s: float) -> None:
        pass

    def reset_producer(self) -> None:
        pass

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        self.committed_offsets.update(offsets)

    def abort(self) -> None:
        pass

    def connected(self) -> bool:
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        pass


def run_service(
    tmp_path: Path, kafka: ScriptedKafka, *, learner_process: bool, checkpoint_every: int = 10**9
) -> DirectoryStore:
    settings = ServiceSettings(
        kafka=KafkaSettings("scripted:9092", TOPIC, "out", "dead", "group"),
        checkpoint_dir=tmp_path / f"checkpoints-{learner_process}",
        batch_size=BATCH,
        checkpoint_every=checkpoint_every,
        checkpoint_interval_s=10**9,  # by default, checkpoints only in the rebalance and at the stop
        instance_id="one",
        learner_process=learner_process,
        torch_threads=torch.get_num_threads(),  # as here: the answers are then equal to the bit
    )

    def new_evaluator() -> PrequentialEvaluator:
        models = build_models(["lstm", "logreg", "no_change"], lstm={"hidden_size": 8, "device": "cpu"})
        return PrequentialEvaluator(models)

    service = StreamService(
        settings, new_evaluator=new_evaluator, telemetry=Telemetry(), kafka_factory=kafka.connect
    )
    kafka.service = service
    service.run()
    assert not kafka.timed_out, "the stream was not done within 60 s"
    return DirectoryStore(settings.checkpoint_dir)


def predictions(kafka: ScriptedKafka) -> dict[tuple[int, int], list[dict[str, float]]]:
    by_offset = collections.defaultdict(list)
    for record in kafka.outputs:
        by_offset[(record["source"]["partition"], record["source"]["offset"])].append(record["predictions"])
    return by_offset


def assert_learned_exactly_once(store: DirectoryStore, kafka: ScriptedKafka) -> None:
    for partition in PARTITIONS:
        saved = store.load_partition(partition)
        assert saved is not None
        assert saved.offset == len(kafka.messages[partition])
        assert saved.events == saved.offset  # every event learned once, none twice


def test_batches_in_flight_give_the_predictions_of_the_service_without_them(tmp_path: Path) -> None:
    here, there = ScriptedKafka(160), ScriptedKafka(160)
    assert_learned_exactly_once(run_service(tmp_path, here, learner_process=False), here)
    store = run_service(tmp_path, there, learner_process=True)
    assert_learned_exactly_once(store, there)
    assert predictions(there) == predictions(here)
    assert len(predictions(there)) == 320 and all(len(p) == 1 for p in predictions(there).values())
    assert store.load_instance("one").evaluator.events == 320


def test_a_rebalance_settles_the_batch_in_flight_before_its_checkpoint(tmp_path: Path) -> None:
    plain, rebalanced = ScriptedKafka(160), ScriptedKafka(160, rebalance_at=7)
    run_service(tmp_path, plain, learner_process=False)
    store = run_service(tmp_path, rebalanced, learner_process=True)
    assert rebalanced.in_flight_at_rebalance
    assert_learned_exactly_once(store, rebalanced)
    # The same instance got its partitions back from the checkpoint written in the rebalance:
    # it goes on exactly where it was, so nothing is read twice and nothing changes.
    assert predictions(rebalanced) == predictions(plain)


def test_a_batch_in_flight_that_cannot_be_published_in_a_rebalance_is_rolled_back(tmp_path: Path) -> None:
    kafka = ScriptedKafka(160, rebalance_at=7)
    kafka.fail_produce_in_rebalance = True
    # Checkpoints before the rebalance: the partitions given back load their key states.
    store = run_service(tmp_path, kafka, learner_process=True, checkpoint_every=40)
    assert kafka.in_flight_at_rebalance and kafka.failed_produces == 1
    assert_learned_exactly_once(store, kafka)
    assert sorted(predictions(kafka)) == [(p, o) for p in (0, 1) for o in range(160)]


def test_a_checkpoint_falling_due_settles_the_batch_in_flight_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a checkpoint is due can change from one look to the next (it is also timed):
    the loop decides once per step, and settles before it checkpoints."""
    looks = iter(range(10**6))
    monkeypatch.setattr(Checkpointer, "due", lambda self, unflushed_bytes: next(looks) % 2 == 1)
    kafka = ScriptedKafka(160)
    store = run_service(tmp_path, kafka, learner_process=True)
    assert_learned_exactly_once(store, kafka)
    assert len(predictions(kafka)) == 320 and all(len(p) == 1 for p in predictions(kafka).values())


def test_a_dead_learner_process_stops_the_service_without_a_checkpoint(tmp_path: Path) -> None:
    kafka = ScriptedKafka(160, kill_child_at=6)
    with pytest.raises(LearnerProcessError, match="exited"):
        run_service(tmp_path, kafka, learner_process=True, checkpoint_every=10**9)
    assert not DirectoryStore(tmp_path / "checkpoints-True").partitions()  # nothing half-learned saved
    assert kafka.killed_child is not None


@pytest.mark.parametrize("learner_process", [True, False])
def test_the_learners_built_for_the_learner_process_stay_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, learner_process: bool
) -> None:
    """On a GPU host the service's own process must not open a CUDA context only to pass the
    weights on: every learner it builds or loads for the child (here: the fresh one, and the one
    a rollback reloads from the checkpoint) is built with learners_on_cpu; a learner that runs
    in the service's process goes to its device."""
    kept_on_cpu: list[bool] = []
    build = LSTMLearner._build

    def spying_build(learner: LSTMLearner) -> None:
        kept_on_cpu.append(learners_kept_on_cpu())
        build(learner)

    monkeypatch.setattr(LSTMLearner, "_build", spying_build)  # in this process: the child is spawned
    kafka = ScriptedKafka(160, rebalance_at=7)
    kafka.fail_produce_in_rebalance = True
    run_service(tmp_path, kafka, learner_process=learner_process, checkpoint_every=40)
    if learner_process:  # a batch was in flight in the rebalance: its failed produce rolled back
        assert kafka.failed_produces == 1 and len(kept_on_cpu) >= 2
    assert kept_on_cpu and set(kept_on_cpu) == {learner_process}
