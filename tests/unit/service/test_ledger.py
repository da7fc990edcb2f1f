"""The ledger's partition phases: each transition of the table in docs/architecture.md."""

from __future__ import annotations

import time

from stream_lstm.kafka.interface import Message
from stream_lstm.messages.events import Event
from stream_lstm.service.ledger import Ledger, PartitionPhase, PartitionProgress

P, Q = ("in", 0), ("in", 1)


def message(partition: tuple[str, int], offset: int) -> Message:
    return Message(partition[0], partition[1], offset, b"k", b"{}", None)


def test_assigned_partitions_are_read_and_released_ones_forgotten() -> None:
    ledger = Ledger()
    assert ledger.phase(P) is PartitionPhase.NOT_OWNED
    ledger.assign([P, Q])
    assert ledger.phase(P) is PartitionPhase.READING
    ledger.record([message(P, 4)], [(message(P, 4), Event(key="a", features={}, label=1))], {})
    ledger.rewind_needed([P])
    ledger.check_committed(Q)
    released = ledger.release([P, Q])
    assert [progress.offset for progress in released] == [5]
    assert ledger.phase(P) is ledger.phase(Q) is PartitionPhase.NOT_OWNED
    assert ledger.offsets() == {} and not ledger.unchecked() and ledger.waiting_for_seek() == []


def test_a_partition_waits_for_its_seek_until_it_is_rewound() -> None:
    ledger = Ledger()
    ledger.assign([P])
    ledger.rewind_needed([P])
    assert ledger.phase(P) is PartitionPhase.REWINDING
    assert ledger.waiting_for_seek() == [P]
    ledger.rewound(P)
    assert ledger.phase(P) is PartitionPhase.READING


def test_a_committed_offset_ahead_of_the_checkpoint_is_replayed_until_a_checkpoint_passes_it() -> None:
    ledger = Ledger()
    ledger.assign([P])
    ledger.restored(P, PartitionProgress(offset=10))
    ledger.check_committed(P)
    assert ledger.phase(P) is PartitionPhase.CHECKING
    assert ledger.next_unchecked() == P
    ledger.committed_read(P, 25)
    assert ledger.phase(P) is PartitionPhase.REPLAYING
    assert ledger.is_replay(P, 24) and not ledger.is_replay(P, 25)
    # The group's committed offset is never moved back while the learner catches up.
    assert ledger.offsets_to_commit({P: 12}) == {P: 25}
    ledger.checkpointed({P: 20})
    assert ledger.phase(P) is PartitionPhase.REPLAYING
    ledger.checkpointed({P: 25})
    assert ledger.phase(P) is PartitionPhase.READING
    assert ledger.offsets_to_commit({P: 25}) == {P: 25}


def test_a_committed_offset_not_ahead_of_the_checkpoint_reads_on() -> None:
    ledger = Ledger()
    ledger.assign([P, Q])
    ledger.restored(P, PartitionProgress(offset=10))
    for partition, committed in ((P, 10), (Q, None)):
        ledger.check_committed(partition)
        ledger.committed_read(ledger.next_unchecked(), committed)
    assert ledger.phase(P) is ledger.phase(Q) is PartitionPhase.READING


def test_a_rollback_forgets_progress_and_replays() -> None:
    ledger = Ledger()
    ledger.assign([P])
    ledger.check_committed(P)
    ledger.committed_read(ledger.next_unchecked(), 7)
    ledger.record([message(P, 0), message(P, 1)], [], {P: 2})
    assert ledger.since_checkpoint == 2 and ledger.progress[P].dead_letters == 2
    ledger.rolled_back()
    assert ledger.progress == {} and ledger.since_checkpoint == 0
    assert ledger.phase(P) is PartitionPhase.READING


def test_recording_a_batch_moves_offsets_counts_and_keys() -> None:
    ledger = Ledger()
    ledger.assign([P, Q])
    learned = [
        (message(P, 3), Event(key="a", features={}, label=0)),
        (message(Q, 8), Event(key="b", features={})),
    ]
    ledger.record([message(P, 3), message(P, 4), message(Q, 8)], learned, {P: 1})
    assert ledger.offsets() == {P: 5, Q: 9}
    assert (ledger.progress[P].events, ledger.progress[P].dead_letters, ledger.progress[P].keys) == (
        1,
        1,
        {"a"},
    )
    assert ledger.progress[Q].keys == {"b"} and ledger.progress[Q].dirty
    assert ledger.since_checkpoint == 3


def test_an_ownership_epoch_is_set_at_assignment_raised_by_a_takeover_and_kept_by_a_rollback() -> None:
    from stream_lstm.service.ledger import Ledger

    ledger = Ledger()
    before = time.time_ns() // 1_000_000
    ledger.assign([("in", 0), ("in", 1)])
    assigned = dict(ledger.epochs)
    assert all(epoch >= before for epoch in assigned.values())
    ledger.assign([("in", 0)])  # assigned again while owned: the same ownership
    assert ledger.epochs == assigned
    ahead = assigned[("in", 1)] + 10_000  # a checkpoint written on a host whose clock runs ahead
    ledger.continue_epoch(("in", 1), ahead)
    assert ledger.epochs[("in", 1)] == ahead + 1
    ledger.rolled_back()
    assert ledger.epochs[("in", 1)] == ahead + 1 and ledger.epochs[("in", 0)] == assigned[("in", 0)]
    ledger.release([("in", 1)])
    assert ("in", 1) not in ledger.epochs
    ledger.assign([("in", 1)])  # a new ownership
    assert ledger.epochs[("in", 1)] >= before
