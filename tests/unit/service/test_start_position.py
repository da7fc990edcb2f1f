"""Where a partition without a checkpoint starts (``--start-from``), at assignment and after a rollback."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_lstm.kafka.interface import KafkaSettings, Partition
from stream_lstm.service.ledger import Ledger
from stream_lstm.service.recovery import Recovery
from stream_lstm.service.settings import ServiceSettings
from stream_lstm.testing.scripted_kafka import messages_of

PARTITION: Partition = ("in", 0)


class SeekLog:
    """The seeks of a Kafka client, in order (the rest of the client is not used here)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def seek(self, partition: Partition, offset: int) -> None:
        self.calls.append(("seek", partition, offset))

    def seek_to_beginning(self, partition: Partition) -> None:
        self.calls.append(("seek_to_beginning", partition))

    def seek_to_committed(self, partition: Partition) -> None:
        self.calls.append(("seek_to_committed", partition))


def recovery(tmp_path: Path, *, start_from: str, exactly_once: bool = False) -> Recovery:
    kafka = KafkaSettings("localhost:1", "in", "out", "dead", "group", exactly_once, start_from=start_from)
    settings = ServiceSettings(kafka=kafka, checkpoint_dir=tmp_path, instance_id="a")
    ledger = Ledger()
    ledger.assign([PARTITION])
    return Recovery(store=None, settings=settings, ledger=ledger, new_evaluator=lambda: None)  # type: ignore[arg-type]


@pytest.mark.parametrize("start_from", ["earliest", "latest"])
def test_at_least_once_a_new_partition_is_left_to_the_client_committed_offset_else_start_from(
    tmp_path: Path, start_from: str
) -> None:
    kafka = SeekLog()
    recovery(tmp_path, start_from=start_from).seek_to_resume_point(kafka, PARTITION)  # type: ignore[arg-type]
    assert kafka.calls == []  # the client's auto offset reset is start_from


def test_exactly_once_earliest_learns_a_new_partition_from_its_beginning(tmp_path: Path) -> None:
    kafka = SeekLog()
    found = recovery(tmp_path, start_from="earliest", exactly_once=True)
    found.seek_to_resume_point(kafka, PARTITION)  # type: ignore[arg-type]
    assert kafka.calls == [("seek_to_beginning", PARTITION)]
    assert found.ledger.next_unchecked() == PARTITION


def test_exactly_once_latest_does_not_go_back_to_the_beginning(tmp_path: Path) -> None:
    kafka = SeekLog()
    found = recovery(tmp_path, start_from="latest", exactly_once=True)
    found.seek_to_resume_point(kafka, PARTITION)  # type: ignore[arg-type]
    assert kafka.calls == []
    assert found.ledger.next_unchecked() == PARTITION  # what the group committed is still read


@pytest.mark.parametrize("exactly_once", [False, True])
def test_a_rollback_before_the_first_checkpoint_goes_back_to_where_latest_started(
    tmp_path: Path, exactly_once: bool
) -> None:
    found = recovery(tmp_path, start_from="latest", exactly_once=exactly_once)
    messages = messages_of("in", 0, [b"{}"] * 50)[40:]  # the run started at the end, offset 40
    found.ledger.record(messages, [], {})
    found.ledger.rolled_back()
    found.ledger.rewind_needed([PARTITION])
    kafka = SeekLog()
    found.seek_pending(kafka)  # type: ignore[arg-type]
    assert kafka.calls == [("seek", PARTITION, 40)]


def test_a_rollback_before_anything_was_read_with_latest_asks_the_committed_offset_else_the_end(
    tmp_path: Path,
) -> None:
    found = recovery(tmp_path, start_from="latest", exactly_once=True)
    found.ledger.rewind_needed([PARTITION])
    kafka = SeekLog()
    found.seek_pending(kafka)  # type: ignore[arg-type]
    assert kafka.calls == [("seek_to_committed", PARTITION)]


@pytest.mark.parametrize(
    ("exactly_once", "expected"),
    [(False, ("seek_to_committed", PARTITION)), (True, ("seek_to_beginning", PARTITION))],
)
def test_a_rollback_with_earliest_is_as_before(tmp_path: Path, exactly_once: bool, expected: tuple) -> None:
    found = recovery(tmp_path, start_from="earliest", exactly_once=exactly_once)
    found.ledger.record(messages_of("in", 0, [b"{}"] * 3), [], {})
    found.ledger.rolled_back()
    found.ledger.rewind_needed([PARTITION])
    kafka = SeekLog()
    found.seek_pending(kafka)  # type: ignore[arg-type]
    assert kafka.calls == [expected]


def test_the_first_offset_read_is_kept_through_rollbacks_and_forgotten_with_the_partition() -> None:
    ledger = Ledger()
    ledger.assign([PARTITION])
    ledger.record(messages_of("in", 0, [b"{}"] * 10)[7:], [], {})
    ledger.rolled_back()
    ledger.record(messages_of("in", 0, [b"{}"] * 10)[8:], [], {})
    assert ledger.first_read == {PARTITION: 7}
    ledger.release([PARTITION])
    assert ledger.first_read == {}
