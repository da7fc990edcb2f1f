"""Which failed deliveries of the confluent client are refused for good, and which input each
stands for (issue 15).

librdkafka does not split a batch the broker refuses, so every record of it gets the error; the
fake producer here behaves so. The client is the real one; only the library's producer and
consumer objects are fakes (and, where a test runs the client's search for culprits out of time,
the clock).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from stream_lstm.kafka.interface import INVALID_RECORD, RECORD_TOO_LARGE, DeliveryFailed, RecordsRejected
from tests.unit.kafka.refusing_broker import (
    BIG,
    BROKER_LIMIT,
    CULPRITS_AT_BOTH_ENDS,
    OUT,
    one_second_per_flush,
    settings,
    source,
)

confluent_kafka = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")
KafkaError, KafkaException = confluent_kafka.KafkaError, confluent_kafka.KafkaException

from stream_lstm.kafka import confluent as confluent_client  # noqa: E402
from stream_lstm.kafka import confluent_sender  # noqa: E402


class FakeMessage:
    def __init__(self, topic: str, partition: int, key: bytes | None, value: bytes) -> None:
        self._topic, self._partition, self._key, self._value = topic, partition, key, value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return self._value


class FakeConfluentProducer:
    """librdkafka's producer in front of a broker that refuses values over BROKER_LIMIT.

    Records wait in ``queued`` until a flush, which sends each partition's records as one batch
    (at most ``batch_size``): a batch holding a record over the limit is refused as a whole,
    every record of it getting MSG_SIZE_TOO_LARGE, as librdkafka reports it.
    """

    def __init__(self) -> None:
        self.queued: list[tuple[FakeMessage, Callable[..., None]]] = []
        self.log: list[bytes] = []
        self.transaction: list[bytes] | None = None
        self.failed_transaction = False
        self.events: list[str] = []
        self.batch_size = 1_000
        self.errors: dict[bytes, KafkaError] = {}  # a value's fixed delivery error, if any

    def init_transactions(self, timeout: float) -> None:
        pass

    def produce(self, topic: str, value: bytes, key: bytes | None = None, on_delivery: Any = None) -> None:
        if len(value) > 1_000_000:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large"))
        partition = 0 if key is None else key[0] % 2
        self.queued.append((FakeMessage(topic, partition, key, value), on_delivery))

    def flush(self, timeout: float | None = None) -> int:
        queued, self.queued = self.queued, []
        for partition in (0, 1):
            records = [entry for entry in queued if entry[0].partition() == partition]
            for start in range(0, len(records), self.batch_size):
                self._deliver(records[start : start + self.batch_size])
        return 0

    def _deliver(self, batch: list[tuple[FakeMessage, Callable[..., None]]]) -> None:
        too_large = any(len(message.value()) > BROKER_LIMIT for message, _ in batch)
        for message, report in batch:
            error = self.errors.get(message.value())
            if error is None and too_large:
                error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
            if error is None:
                (self.transaction if self.transaction is not None else self.log).append(message.value())
            elif self.transaction is not None:
                self.failed_transaction = True
            report(error, message)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def begin_transaction(self) -> None:
        assert self.transaction is None, "a transaction is open already"
        self.transaction, self.failed_transaction = [], False
        self.events.append("begin")

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        pass

    def commit_transaction(self, timeout: float) -> None:
        self.flush()
        if self.failed_transaction:
            raise KafkaException(
                KafkaError(KafkaError._INCONSISTENT, "delivery failed", txn_requires_abort=True)
            )
        assert self.transaction is not None
        self.log.extend(self.transaction)
        self.transaction = None
        self.events.append("commit")

    def abort_transaction(self, timeout: float) -> None:
        queued, self.queued = self.queued, []
        for message, report in queued:
            report(KafkaError(KafkaError._PURGE_QUEUE, "purged"), message)
        self.transaction = None
        self.events.append("abort")

    def purge(self) -> None:
        self.queued = []


class FakeConfluentConsumer:
    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        pass

    def assignment(self) -> list[Any]:
        return []

    def close(self) -> None:
        pass


@pytest.fixture
def confluent(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    def create(kind: Any, config: dict[str, Any]) -> Any:
        return FakeConfluentConsumer() if kind is confluent_client.Consumer else FakeConfluentProducer()

    monkeypatch.setattr(confluent_client, "create_client", create)
    monkeypatch.setattr(confluent_sender, "create_client", create)

    def connect(*, exactly_once: bool = False) -> confluent_client.ConfluentIO:
        return confluent_client.ConfluentIO(
            settings(exactly_once=exactly_once, client="confluent"),
            on_assigned=lambda _: None,
            on_revoked=lambda _: None,
        )

    return connect


def test_confluent_a_record_alone_in_its_refused_batch_is_rejected_at_once(confluent) -> None:
    kafka = confluent()
    kafka.produce(OUT, b"\x00", b"even", source=source(1))
    kafka.produce(OUT, b"\x01", BIG, source=source(2))  # partition 1, alone there
    with pytest.raises(RecordsRejected) as caught:
        kafka.flush(1.0)
    [rejected] = caught.value.rejected
    assert (rejected.topic, rejected.source, rejected.code) == (OUT, source(2), RECORD_TOO_LARGE)
    assert kafka.producer.log == [b"even"]


def test_confluent_the_innocent_records_of_a_refused_batch_are_delivered_again(confluent) -> None:
    kafka = confluent()
    values = [b"a", b"b", BIG, b"c", b"d", b"e", BIG + b"y", b"f"]
    for offset, value in enumerate(values):
        kafka.produce(OUT, b"\x00", value, source=source(offset))  # one partition, one batch
    with pytest.raises(RecordsRejected) as caught:
        kafka.flush(5.0)
    assert sorted(r.source for r in caught.value.rejected) == [source(2), source(6)]
    assert sorted(kafka.producer.log) == [b"a", b"b", b"c", b"d", b"e", b"f"]


def test_confluent_a_refused_batch_whose_records_all_go_through_again_is_delivered(confluent) -> None:
    kafka = confluent()
    for value in (b"a", b"b"):
        kafka.producer.errors[value] = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: too large")
    kafka.produce(OUT, b"\x00", b"a", source=source(1))
    kafka.produce(OUT, b"\x00", b"b", source=source(2))
    kafka.producer.flush()  # refused together, as suspects
    kafka.producer.errors.clear()  # sent alone, each goes through: no culprit
    kafka.flush(1.0)
    assert kafka.producer.log == [b"a", b"b"]


def test_confluent_a_search_out_of_time_keeps_the_culprits_it_found(
    confluent, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = confluent()
    for offset, value in enumerate(CULPRITS_AT_BOTH_ENDS):
        kafka.produce(OUT, b"\x00", value, source=source(offset))  # one partition, one batch
    one_second_per_flush(monkeypatch, confluent_sender, kafka.producer)
    with pytest.raises(DeliveryFailed) as caught:
        kafka.flush(5.0)
    assert not isinstance(caught.value, RecordsRejected)
    assert [r.source for r in caught.value.rejected] == [source(0)]
    assert kafka.producer.log == [b"a", b"b"]  # the innocent half, sent again before time ran out


def test_confluent_a_refused_batch_among_other_failures_is_a_delivery_failure(confluent) -> None:
    kafka = confluent()
    kafka.producer.errors[b"lost"] = KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out")
    kafka.produce(OUT, b"\x00", b"lost", source=source(1))
    kafka.produce(OUT, b"\x01", BIG, source=source(2))
    with pytest.raises(DeliveryFailed) as caught:
        kafka.flush(1.0)
    assert not isinstance(caught.value, RecordsRejected)
    assert [r.source for r in caught.value.rejected] == [source(2)]


def test_confluent_records_failed_for_another_records_fault_are_sent_again(confluent) -> None:
    kafka = confluent()
    kafka.producer.errors[b"bad"] = KafkaError(KafkaError.INVALID_RECORD, "Broker: null key")
    kafka.producer.errors[b"ok"] = KafkaError(KafkaError._INVALID_DIFFERENT_RECORD, "same batch")
    kafka.produce(OUT, b"\x00", b"bad", source=source(1))
    kafka.produce(OUT, b"\x00", b"ok", source=source(2))
    kafka.producer.flush()
    del kafka.producer.errors[b"ok"]  # sent again without the invalid one, it goes through
    with pytest.raises(RecordsRejected) as caught:
        kafka.flush(1.0)
    assert [(r.source, r.code) for r in caught.value.rejected] == [(source(1), INVALID_RECORD)]
    assert kafka.producer.log == [b"ok"]


@pytest.mark.parametrize(
    "code",
    [KafkaError._MSG_TIMED_OUT, KafkaError.INVALID_MSG, KafkaError.INVALID_TIMESTAMP, KafkaError._TRANSPORT],
)
def test_confluent_other_errors_are_delivery_failures(confluent, code: int) -> None:
    kafka = confluent()
    kafka.producer.errors[b"v"] = KafkaError(code, "failed")
    kafka.produce(OUT, b"\x00", b"v", source=source(1))
    with pytest.raises(DeliveryFailed) as caught:
        kafka.flush(1.0)
    assert not isinstance(caught.value, RecordsRejected) and caught.value.rejected == ()


def test_confluent_a_fatal_error_is_never_a_rejection(confluent) -> None:
    kafka = confluent()
    kafka.producer.errors[b"v"] = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "fatal", fatal=True)
    kafka.produce(OUT, b"\x00", b"v", source=source(1))
    with pytest.raises(DeliveryFailed) as caught:
        kafka.flush(1.0)
    assert not isinstance(caught.value, RecordsRejected)


def test_confluent_the_culprits_of_a_failed_transaction_are_found_by_trial(confluent) -> None:
    kafka = confluent(exactly_once=True)
    values = [b"a", b"b", BIG, b"c", b"d", BIG + b"y", b"e"]
    for offset, value in enumerate(values):
        kafka.produce(OUT, b"\x00", value, source=source(offset))
    producer = kafka.producer
    with pytest.raises(RecordsRejected) as caught:
        kafka.commit({})
    assert sorted(r.source for r in caught.value.rejected) == [source(2), source(5)]
    assert producer.log == []  # every trial transaction was aborted
    assert "commit" not in producer.events and producer.events.count("begin") == producer.events.count(
        "abort"
    )
    kafka.abort()
    assert producer.transaction is None


def test_confluent_a_trial_search_out_of_time_keeps_the_culprits_it_found(
    confluent, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = confluent(exactly_once=True)
    for offset, value in enumerate(CULPRITS_AT_BOTH_ENDS):
        kafka.produce(OUT, b"\x00", value, source=source(offset))
    one_second_per_flush(monkeypatch, confluent_sender, kafka.producer)
    monkeypatch.setattr(confluent_sender, "_ISOLATION_BUDGET_S", 3.5)
    with pytest.raises(DeliveryFailed) as caught:
        kafka.commit({})
    assert not isinstance(caught.value, RecordsRejected)
    assert [r.source for r in caught.value.rejected] == [source(0)]
    kafka.abort()
    assert kafka.producer.log == [] and kafka.producer.transaction is None


def test_confluent_one_refused_record_fails_the_transaction_with_its_source(confluent) -> None:
    kafka = confluent(exactly_once=True)
    kafka.produce(OUT, b"\x00", b"a", source=source(1))
    kafka.produce(OUT, b"\x01", BIG, source=source(2))
    with pytest.raises(RecordsRejected) as caught:
        kafka.commit({})
    assert [r.source for r in caught.value.rejected] == [source(2)]
    assert kafka.producer.events == ["begin"]  # no trials needed; the service aborts
    kafka.abort()
    assert kafka.producer.events == ["begin", "abort"]


def test_confluent_exactly_once_refuses_an_oversized_record_at_produce_time(confluent) -> None:
    kafka = confluent(exactly_once=True)
    with pytest.raises(RecordsRejected) as caught:
        kafka.produce(OUT, b"k", b"x" * 1_000_000, source=source(5))
    assert caught.value.rejected[0].source == source(5)
    kafka.produce(OUT, b"k", b"x" * (1_000_000 - 36 - 1), source=source(6))  # the largest librdkafka takes
    assert [record[3] for record in kafka.sender._held] == [source(6)]
