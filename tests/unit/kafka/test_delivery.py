"""Building the delivery errors, and the search for the records a broker refuses on their own (issue 15)."""

from __future__ import annotations

import pytest

from stream_lstm.kafka.delivery import delivery_failure, isolate_rejected, rejected_record
from stream_lstm.kafka.interface import (
    RECORD_TOO_LARGE,
    DeliveryFailed,
    KafkaIOError,
    RecordsRejected,
    RejectedRecord,
)
from tests.unit.kafka.refusing_broker import OUT, source


def test_a_rejected_records_detail_is_bounded() -> None:
    record = rejected_record(OUT, None, RECORD_TOO_LARGE, "e" * 5_000)
    assert len(record.detail) == 300 and record.detail.endswith("...")
    assert rejected_record(OUT, None, RECORD_TOO_LARGE, "short").detail == "short"


def test_only_refusals_alone_make_records_rejected() -> None:
    refused = [RejectedRecord(OUT, source(1), RECORD_TOO_LARGE, "too large")]
    alone = delivery_failure(refused, [])
    assert isinstance(alone, RecordsRejected) and alone.rejected == tuple(refused)
    mixed = delivery_failure(refused, ["out: broker not available"])
    assert type(mixed) is DeliveryFailed and mixed.rejected == tuple(refused)
    assert DeliveryFailed("plain").rejected == ()


def test_there_is_no_delivery_failure_without_a_failure() -> None:
    with pytest.raises(ValueError, match="everything was delivered"):
        delivery_failure([], [])


def test_isolating_finds_every_culprit_and_only_them() -> None:
    def refuse_batches_with_big_records(group: list[int]) -> list[tuple[int, str, str]]:
        return [(i, RECORD_TOO_LARGE, "big") for i in range(len(group))] if max(group) > 9 else []

    records = [1, 50, 2, 3, 4, 5, 60, 6, 7, 8, 9, 70]
    found = isolate_rejected(records, refuse_batches_with_big_records)
    assert sorted(records[i] for i, _, _ in found) == [50, 60, 70]
    assert isolate_rejected([1, 2, 3], refuse_batches_with_big_records) == []


def test_a_search_that_fails_part_way_keeps_the_culprits_it_found() -> None:
    sends = 0

    def out_of_time_after_four_sends(group: list[int]) -> list[tuple[int, str, str]]:
        nonlocal sends
        sends += 1
        if sends > 4:
            raise KafkaIOError("no time left")
        return [(i, RECORD_TOO_LARGE, "big") for i in range(len(group))] if max(group) > 9 else []

    records = [50, 1, 2, 3, 4, 60]
    found: list[tuple[int, str, str]] = []
    with pytest.raises(KafkaIOError):
        isolate_rejected(records, out_of_time_after_four_sends, found)
    assert [records[i] for i, _, _ in found] == [50]
