"""The service's batch in flight (LSTM in a process of its own), on a scripted Kafka client.

The real-broker tests (tests/integration) check the same service end to end; this client makes
a rebalance, or a failed produce, happen exactly while a batch is in flight.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from stream_lstm.kafka.interface import KafkaIOError
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.learner.placement import learners_kept_on_cpu
from stream_lstm.learner.process import LearnerProcessError
from stream_lstm.service.checkpointer import Checkpointer
from stream_lstm.service.stream_service import StreamService
from stream_lstm.testing import MemoryStore, ScriptedKafka
from tests.unit.service.scripted_service import assert_learned_exactly_once, predictions, run_service, stream


class InFlightScript:
    """Cues for :class:`ScriptedKafka`: a rebalance at a poll (noting whether a batch was in
    flight then, and optionally failing every produce while the partitions are revoked), or a
    SIGKILL of the learner process at a poll."""

    def __init__(
        self, events_per_partition: int, *, rebalance_at: int | None = None, kill_child_at: int | None = None
    ) -> None:
        cues = {}
        if rebalance_at is not None:
            cues[rebalance_at] = self._rebalance
        if kill_child_at is not None:
            cues[kill_child_at] = self._kill_child
        self.kafka = ScriptedKafka(stream(events_per_partition), cues=cues)
        self.fail_produce_in_rebalance = False
        self.in_flight_at_rebalance = False
        self.killed_child: int | None = None
        self.service: StreamService | None = None

    def run(self, **options: Any) -> MemoryStore:
        store = MemoryStore()
        run_service(self.kafka, store, started=self._started, **options)
        return store

    def _started(self, service: StreamService) -> None:
        self.service = service

    def _rebalance(self, kafka: ScriptedKafka) -> None:
        assert self.service is not None
        self.in_flight_at_rebalance = self.service.in_flight is not None
        if self.fail_produce_in_rebalance:
            kafka.produce_error = KafkaIOError("the broker is away (scripted)")
        try:
            kafka.rebalance()
        finally:
            kafka.produce_error = None

    def _kill_child(self, kafka: ScriptedKafka) -> None:
        assert self.service is not None
        assert self.service.learner_process is not None and self.service.in_flight is not None
        self.killed_child = self.service.learner_process.pid
        os.kill(self.killed_child, signal.SIGKILL)


def test_batches_in_flight_give_the_predictions_of_the_service_without_them() -> None:
    here, there = InFlightScript(160), InFlightScript(160)
    assert_learned_exactly_once(here.run(learner_process=False), here.kafka)
    store = there.run(learner_process=True)
    assert_learned_exactly_once(store, there.kafka)
    assert predictions(there.kafka) == predictions(here.kafka)
    assert len(predictions(there.kafka)) == 320 and all(
        len(p) == 1 for p in predictions(there.kafka).values()
    )
    # Every record carries every model's prediction, the mixture's among them.
    assert all(
        list(p[0]) == ["lstm", "logreg", "no_change", "mix"] for p in predictions(there.kafka).values()
    )
    assert store.load_instance("one").evaluator.events == 320


def test_a_rebalance_settles_the_batch_in_flight_before_its_checkpoint() -> None:
    plain, rebalanced = InFlightScript(160), InFlightScript(160, rebalance_at=7)
    plain.run(learner_process=False)
    store = rebalanced.run(learner_process=True)
    assert rebalanced.in_flight_at_rebalance
    assert_learned_exactly_once(store, rebalanced.kafka)
    # The same instance got its partitions back from the checkpoint written in the rebalance:
    # it goes on exactly where it was, so nothing is read twice and nothing changes.
    assert predictions(rebalanced.kafka) == predictions(plain.kafka)


def test_a_batch_in_flight_that_cannot_be_published_in_a_rebalance_is_rolled_back() -> None:
    script = InFlightScript(160, rebalance_at=7)
    script.fail_produce_in_rebalance = True
    # Checkpoints before the rebalance: the partitions given back load their key states.
    store = script.run(learner_process=True, checkpoint_every=40)
    assert script.in_flight_at_rebalance and script.kafka.failed_produces == 1
    assert_learned_exactly_once(store, script.kafka)
    assert sorted(predictions(script.kafka)) == [(p, o) for p in (0, 1) for o in range(160)]


def test_a_checkpoint_falling_due_settles_the_batch_in_flight_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether a checkpoint is due can change from one look to the next (it is also timed):
    the loop decides once per step, and settles before it checkpoints."""
    looks = iter(range(10**6))
    monkeypatch.setattr(Checkpointer, "due", lambda self, unflushed_bytes: next(looks) % 2 == 1)
    script = InFlightScript(160)
    store = script.run(learner_process=True)
    assert_learned_exactly_once(store, script.kafka)
    assert len(predictions(script.kafka)) == 320 and all(
        len(p) == 1 for p in predictions(script.kafka).values()
    )


def test_a_dead_learner_process_stops_the_service_without_a_checkpoint() -> None:
    script = InFlightScript(160, kill_child_at=6)
    store = MemoryStore()
    with pytest.raises(LearnerProcessError, match="exited"):
        run_service(script.kafka, store, started=script._started, learner_process=True)
    assert not store.partitions()  # nothing half-learned saved
    assert script.killed_child is not None


@pytest.mark.parametrize("learner_process", [True, False])
def test_the_learners_built_for_the_learner_process_stay_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, learner_process: bool
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
    script = InFlightScript(160, rebalance_at=7)
    script.fail_produce_in_rebalance = True
    script.run(learner_process=learner_process, checkpoint_every=40)
    if learner_process:  # a batch was in flight in the rebalance: its failed produce rolled back
        assert script.kafka.failed_produces == 1 and len(kept_on_cpu) >= 2
    assert kept_on_cpu and set(kept_on_cpu) == {learner_process}
