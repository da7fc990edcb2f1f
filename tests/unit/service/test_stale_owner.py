"""An instance that lost a partition without noticing (frozen while the group gave it away) does
not overwrite the new owner's checkpoint of it: the store refuses the stale write, and the
instance lets the partition go while it keeps the others."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from stream_lstm.kafka.interface import DeliveryFailed
from stream_lstm.service.ledger import ownership_epoch
from stream_lstm.state.store import PartitionState
from stream_lstm.testing import MemoryStore, ScriptedKafka
from tests.unit.service.scripted_service import PARTITIONS, lstm_of, run_service, stream


def test_each_owner_writes_a_later_epoch_than_the_checkpoint_it_continued_from() -> None:
    store = MemoryStore()
    run_service(ScriptedKafka(stream(40)), store, checkpoint_every=16)
    first = {partition: store.partition_history(partition) for partition in PARTITIONS}
    assert all(len({s.epoch for s in history}) == 1 for history in first.values())  # one ownership each
    longer = stream(80)
    run_service(ScriptedKafka(longer), store, checkpoint_every=16, instance_id="two")
    for partition in PARTITIONS:
        later = store.partition_history(partition)[len(first[partition]) :]
        assert later and len({s.epoch for s in later}) == 1
        assert later[0].epoch > first[partition][-1].epoch
        assert later[-1].offset == len(longer[partition]) and later[-1].instance == "two"


def test_an_epoch_is_later_than_the_one_continued_even_from_a_clock_ahead() -> None:
    now_ms = time.time_ns() // 1_000_000
    assert ownership_epoch(None) >= now_ms
    assert ownership_epoch(5) >= now_ms  # a checkpoint of long ago, or of before epochs
    ahead = now_ms + 3_600_000  # written on a host whose clock runs an hour ahead
    assert ownership_epoch(ahead) == ahead + 1


def test_a_partition_taken_over_meanwhile_is_let_go_and_its_new_checkpoint_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    taken = PARTITIONS[0]
    newer: list[PartitionState] = []

    def other_instance_takes_over(kafka: ScriptedKafka) -> None:
        # Another instance continued partition 0 from our last checkpoint and saved it, later.
        ours = store.load_partition(taken)
        assert ours is not None and ours.instance == "one"
        newer.append(replace(ours, offset=ours.offset + 5, instance="other", epoch=ours.epoch + 1))
        store.save_partition(newer[0])

    messages = stream(120)
    kafka = ScriptedKafka(messages, cues={6: other_instance_takes_over})
    service = run_service(kafka, store, checkpoint_every=32)

    assert newer, "the cue did not run"
    history = store.partition_history(taken)
    last = history[-1]  # nothing of "one" after the other owner's checkpoint
    assert (last.offset, last.instance, last.epoch) == (newer[0].offset, "other", newer[0].epoch)
    assert [s.instance for s in history].count("other") == 1
    assert "letting it go" in caplog.text and "partition was taken over" in caplog.text
    assert taken not in service.ledger.owned
    kept = store.load_partition(PARTITIONS[1])  # the other partition goes on as before
    assert kept is not None and kept.instance == "one" and kept.offset == len(messages[PARTITIONS[1]])
    assert kept.events + kept.dead_letters == kept.offset
    committed = [offsets for offsets in kafka.commits if taken in offsets]
    assert all(offsets[taken] <= newer[0].offset - 5 for offsets in committed)  # never past what it saved
    # The other owner learns partition 0 from our last checkpoint of it on: our weights went back
    # to that checkpoint, and learned what our checkpoints count, none of it twice.
    ours = [s for s in history if s.instance == "one"][-1]
    instance = store.load_instance("one")
    assert instance is not None
    assert lstm_of(instance).events_seen == instance.evaluator.events == kept.events + ours.events


def test_a_rollback_keeps_the_ownership_epoch() -> None:
    """A rollback reloads the partitions, but it is the same ownership: an owner that lost a
    partition and then rolled back must stay older than the partition's new owner."""
    store = MemoryStore()
    kafka = ScriptedKafka(
        stream(120), cues={8: lambda k: k.fail_flushes(DeliveryFailed("the broker went away (scripted)"))}
    )
    run_service(kafka, store, checkpoint_every=40)
    assert kafka.dropped  # the failure did lose records, and the service rolled back
    for partition in PARTITIONS:
        history = store.partition_history(partition)
        assert len(history) > 2 and len({s.epoch for s in history}) == 1, [s.epoch for s in history]
