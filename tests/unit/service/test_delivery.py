"""What the service promises about delivery, pinned on a scripted Kafka client and a store in memory.

The client holds every produced record until a flush delivers it; the store checks, at every
checkpoint it is given, that the outputs of the offsets it records were delivered and that the
saved weights learned exactly the events the saved partitions count. Each test fails on the
mutation of the service it is named after (the failing flush, the slow flush, the refused
write, the lost partitions, the warm start, the rollback's reload of the weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch

from stream_lstm.errors import CheckpointError
from stream_lstm.kafka.interface import DeliveryFailed, DeliveryPending, Partition
from stream_lstm.service.stream_service import ServiceState, StreamService
from stream_lstm.state.store import InstanceState, PartitionState
from stream_lstm.testing import MemoryStore, ScriptedKafka
from tests.unit.service.scripted_service import (
    PARTITIONS,
    assert_learned_exactly_once,
    delivered_offsets,
    lstm_of,
    run_service,
    stream,
)


class CheckingStore(MemoryStore):
    """A store that notes, at each write, what would break delivery if the service crashed then."""

    def __init__(self, kafka: ScriptedKafka) -> None:
        super().__init__()
        self.kafka = kafka
        #: Offsets a partition checkpoint records as done whose output was not delivered yet.
        self.undelivered: list[tuple[Partition, int]] = []
        #: Instance checkpoints whose weights learned other than the events the partitions count.
        self.mismatched: list[tuple[int, int]] = []

    def save_partition(self, state: PartitionState) -> int:
        delivered = delivered_offsets(self.kafka)
        self.undelivered += [
            ((state.topic, state.partition), offset)
            for offset in range(state.offset)
            if not delivered.get((state.partition, offset))
        ]
        return super().save_partition(state)

    def save_instance(self, state: InstanceState) -> int:
        size = super().save_instance(state)
        counted = sum(
            saved.events for p in self.partitions() if (saved := self.load_partition(p)) is not None
        )
        written = self.load_instance(state.instance)  # as saved (a learner process saves its learner)
        assert written is not None
        learned = lstm_of(written).events_seen
        if learned != counted:
            self.mismatched.append((learned, counted))
        return size


class CheckingKafka(ScriptedKafka):
    """A client that notes every commit of an offset that no checkpoint recorded yet."""

    store: MemoryStore

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ahead_of_checkpoints: list[tuple[Partition, int]] = []

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        for partition, offset in offsets.items():
            saved = self.store.load_partition(partition)
            if saved is None or saved.offset < offset:
                self.ahead_of_checkpoints.append((partition, offset))
        super().commit(offsets)


def scripted(
    events_per_partition: int = 160, cues: dict[int, Any] | None = None
) -> tuple[CheckingKafka, CheckingStore]:
    kafka = CheckingKafka(stream(events_per_partition), cues=cues)
    store = CheckingStore(kafka)
    kafka.store = store
    return kafka, store


def assert_delivery_kept(kafka: CheckingKafka, store: CheckingStore) -> None:
    """Every checkpoint had its outputs delivered and its weights matching its offsets; no
    commit ran ahead of a checkpoint (at-least-once: with exactly-once the transaction commits
    first, and a crash before the checkpoint is replayed); every event has a delivered prediction."""
    assert store.undelivered == []
    assert store.mismatched == []
    if not kafka.exactly_once:
        assert kafka.ahead_of_checkpoints == []
    delivered = delivered_offsets(kafka)
    assert all(delivered.get((p, o)) for p, o in [(p, o) for _, p in PARTITIONS for o in range(160)])


@pytest.mark.parametrize("learner_process", [False, True])
def test_each_checkpoint_waits_for_its_outputs_to_be_delivered(learner_process: bool) -> None:
    kafka, store = scripted()
    run_service(kafka, store, checkpoint_every=40, learner_process=learner_process)
    assert len(store.instance_history("one")) >= 4  # checkpoints did happen mid-stream
    assert_delivery_kept(kafka, store)
    assert_learned_exactly_once(store, kafka)
    assert all(count == 1 for count in delivered_offsets(kafka).values())  # nothing failed: no copies


@pytest.mark.parametrize("learner_process", [False, True])
def test_a_failed_flush_rolls_back_the_weights_with_the_partitions(learner_process: bool) -> None:
    """The broker loses the records of one checkpoint interval: the service goes back to the last
    checkpoint, weights included, and processes the interval again; nothing is learned twice."""
    kafka, store = scripted(
        cues={8: lambda k: k.fail_flushes(DeliveryFailed("the broker went away (scripted)"))}
    )
    run_service(kafka, store, checkpoint_every=40, learner_process=learner_process)
    assert kafka.dropped  # the failure did lose records
    assert_delivery_kept(kafka, store)
    assert_learned_exactly_once(store, kafka)


def test_exactly_once_a_failed_transaction_is_aborted_and_each_event_published_once() -> None:
    """With --exactly-once the outputs go with the offsets in one transaction: a failed one is
    aborted, its interval processed again, and a reader sees each prediction exactly once."""
    broker_away = DeliveryFailed("the transaction failed (scripted)")
    kafka, store = scripted(cues={8: lambda k: k.fail_commits(broker_away)})
    run_service(kafka, store, checkpoint_every=40, exactly_once=True)
    assert kafka.dropped  # the aborted transaction's records
    assert_delivery_kept(kafka, store)
    assert_learned_exactly_once(store, kafka)
    assert all(count == 1 for count in delivered_offsets(kafka).values())


def test_a_slow_flush_writes_nothing_until_the_broker_acknowledges() -> None:
    """Records not acknowledged yet are neither a checkpoint nor a reason to roll back: the
    checkpoint waits, and each event is still published once."""
    pending = [DeliveryPending("not acknowledged yet (scripted)")] * 3
    kafka, store = scripted(cues={8: lambda k: k.fail_flushes(*pending)})
    run_service(kafka, store, checkpoint_every=40)
    assert kafka.flushes > len(store.instance_history("one"))  # some flushes did not lead to a write
    assert kafka.dropped == []  # no rollback
    assert_delivery_kept(kafka, store)
    assert_learned_exactly_once(store, kafka)
    assert all(count == 1 for count in delivered_offsets(kafka).values())


def test_a_refused_checkpoint_write_commits_nothing_and_is_retried() -> None:
    health: list[dict[str, Any]] = []
    service: list[StreamService] = []

    def refuse_then_look(kafka: ScriptedKafka) -> None:
        store.refuse_writes(2)

    def look(kafka: ScriptedKafka) -> None:
        health.append(service[0].health()[1])

    kafka, store = scripted(cues={8: refuse_then_look, 9: look, 10: look, 11: look})
    run_service(kafka, store, checkpoint_every=40, started=service.append)
    assert any(h.get("checkpoint_error") for h in health)  # /healthz said so meanwhile
    assert_delivery_kept(kafka, store)
    assert_learned_exactly_once(store, kafka)


def test_lost_partitions_are_never_written_and_their_keys_are_forgotten() -> None:
    """Lost with events learned since their checkpoints: nothing is written, the weights go back
    to the checkpoint (a rollback, which forgets the keys), and every event is learned once."""
    seen: dict[str, Any] = {}
    service: list[StreamService] = []

    def keys(kafka: ScriptedKafka) -> set[str]:
        return {message.key.decode() for messages in kafka.messages.values() for message in messages}

    def lose(kafka: ScriptedKafka) -> None:
        running = service[0]
        writes = len(store.writes)
        seen["held_before"] = bool(running.evaluator.held_keys(keys(kafka)))
        seen["learned_since_checkpoint"] = running.ledger.since_checkpoint > 0
        kafka.lose()
        seen["writes"] = len(store.writes) - writes
        seen["owned"] = set(running.ledger.owned)
        seen["state"] = running.state

    def look_then_reassign(kafka: ScriptedKafka) -> None:
        seen["held_keys"] = service[0].evaluator.held_keys(keys(kafka))
        kafka.reassign()

    kafka, store = scripted(cues={8: lose, 10: look_then_reassign})
    run_service(kafka, store, checkpoint_every=40, started=service.append)
    assert seen == {
        "held_before": True,
        "learned_since_checkpoint": True,
        "writes": 0,
        "owned": set(),
        "state": ServiceState.ROLLBACK_REQUESTED,
        "held_keys": set(),
    }
    for partition in PARTITIONS:  # each partition went on from its checkpoint, counted once
        saved = store.load_partition(partition)
        assert saved is not None and saved.offset == 160 and saved.events == 160
    delivered = delivered_offsets(kafka)
    assert all(delivered.get((p, o)) for _, p in PARTITIONS for o in range(160))
    assert_delivery_kept(kafka, store)
    # What the weights learned after the last checkpoint is read again: they went back to it.
    assert_learned_exactly_once(store, kafka)


def test_a_new_instance_starts_from_the_newest_other_instances_weights_with_fresh_scores() -> None:
    whole = stream(320, seed=5)
    first_half = {p: messages[:160] for p, messages in whole.items()}
    store = MemoryStore()
    run_service(ScriptedKafka(first_half), store, instance_id="one")
    one = store.load_instance("one")
    assert one is not None and lstm_of(one).events_seen == 320

    started_with: dict[str, Any] = {}

    def note_start(service: StreamService) -> None:
        lstm = lstm_of(InstanceState(service.evaluator, "two"))
        started_with["events_seen"] = lstm.events_seen
        started_with["scored"] = service.evaluator.events
        started_with["same_weights"] = all(
            torch.equal(a, b)
            for a, b in zip(lstm.network.parameters(), lstm_of(one).network.parameters(), strict=True)
        )

    kafka = ScriptedKafka(whole)
    run_service(kafka, store, instance_id="two", started=note_start)
    assert started_with == {"events_seen": 320, "scored": 0, "same_weights": True}
    two = store.load_instance("two")
    assert two is not None
    assert lstm_of(two).events_seen == 640  # one's 320, then the second halves
    assert two.evaluator.events == 320  # its scores count only what it predicted itself
    assert sorted(delivered_offsets(kafka)) == [(p, o) for p in (0, 1) for o in range(160, 320)]


def test_the_service_states_and_their_transitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONNECTING -> RUNNING -> ROLLBACK_REQUESTED -> RUNNING -> STOPPING -> STOPPED."""
    seen: list[ServiceState] = []
    service: list[StreamService] = []

    def note(kafka: ScriptedKafka) -> None:
        seen.append(service[0].state)

    def revoke_with_a_failing_checkpoint(kafka: ScriptedKafka) -> None:
        kafka.fail_flushes(DeliveryFailed("the broker went away (scripted)"))
        kafka.rebalance()  # the revocation's checkpoint fails: a rollback is requested
        seen.append(service[0].state)

    def started(running: StreamService) -> None:
        service.append(running)
        seen.append(running.state)

    stop = StreamService.stop

    def stop_and_note(self: StreamService) -> None:
        stop(self)
        seen.append(self.state)

    monkeypatch.setattr(StreamService, "stop", stop_and_note)
    kafka, store = scripted(cues={3: note, 5: revoke_with_a_failing_checkpoint, 6: note})
    run_service(kafka, store, checkpoint_every=40, started=started)
    seen.append(service[0].state)
    assert seen == [
        ServiceState.CONNECTING,
        ServiceState.RUNNING,
        ServiceState.ROLLBACK_REQUESTED,
        ServiceState.RUNNING,  # the next step rolled back
        ServiceState.STOPPING,
        ServiceState.STOPPED,
    ]
    assert kafka.dropped  # the rollback dropped what the failed flush held
    assert_delivery_kept(kafka, store)
    assert_learned_exactly_once(store, kafka)


def test_a_partition_checkpoint_that_cannot_be_read_fails_the_service_without_writing() -> None:
    """RUNNING -> FAILED -> STOPPED: run() raises, and no checkpoint is written over the damage."""
    seen: list[ServiceState] = []
    service: list[StreamService] = []
    kafka, store = scripted(cues={4: lambda k: k.rebalance(), 5: lambda k: seen.append(service[0].state)})
    run_service(kafka, store, checkpoint_every=40, started=service.append)  # writes checkpoints
    writes = len(store.writes)

    def damaged(partition: Partition, *, latest: bool = True) -> PartitionState | None:
        raise CheckpointError(f"partition {partition} is damaged (scripted)")

    store.load_partition = damaged  # type: ignore[method-assign]
    kafka, _ = scripted(cues={0: lambda k: seen.append(service[-1].state)})
    with pytest.raises(CheckpointError, match="cannot continue partition in:0 from its checkpoint"):
        run_service(kafka, store, checkpoint_every=40, started=service.append)
    assert seen[-1] is ServiceState.FAILED and service[-1].state is ServiceState.STOPPED
    assert len(store.writes) == writes and kafka.delivered == []


def test_a_stop_while_connecting_stops_without_a_client() -> None:
    """CONNECTING -> STOPPED: the broker is unreachable, and a stop ends the retries."""
    service: list[StreamService] = []
    attempts: list[int] = []

    def unreachable(*args: Any, **kwargs: Any) -> ScriptedKafka:
        attempts.append(1)
        if len(attempts) == 3:
            service[0].stop()
        raise ConnectionError("no broker (scripted)")

    kafka, store = scripted()
    kafka.connect = unreachable  # type: ignore[method-assign]
    run_service(kafka, store, started=service.append)
    assert len(attempts) == 3 and service[0].state is ServiceState.STOPPED
    assert store.writes == []
