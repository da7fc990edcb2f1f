"""Which failed deliveries of the kafka-python client are refused for good, and which input each
stands for (issue 15).

kafka-python splits a batch the broker finds too large until the culprit stands alone, but fails
the batches it had not sent when a transaction fails, with the same error; the fake producer here
behaves so. The client is the real one; only the library's producer and consumer objects are
fakes (and, where a test runs the client's search for culprits out of time, the clock).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import errors as kafka_errors
from kafka.future import Future

from stream_lstm.kafka import kafka_python as kafka_python_client
from stream_lstm.kafka import kafka_python_sender
from stream_lstm.kafka.interface import (
    INVALID_RECORD,
    RECORD_TOO_LARGE,
    DeliveryFailed,
    DeliveryPending,
    KafkaIOError,
    RecordsRejected,
)
from tests.unit.kafka.refusing_broker import (
    BIG,
    BROKER_LIMIT,
    CULPRITS_AT_BOTH_ENDS,
    OUT,
    one_second_per_flush,
    settings,
    source,
)


class FakeKafkaConsumer:
    def __init__(self, **_config: Any) -> None:
        pass

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        pass

    def assignment(self) -> set[Any]:
        return set()

    def close(self, autocommit: bool = False) -> None:
        pass


class FakeKafkaProducer:
    """kafka-python's producer in front of a broker that refuses values over BROKER_LIMIT.

    Records wait in ``queued`` until a flush. Outside a transaction only the culprit fails (the
    library splits batches). In a transaction, the first refusal fails every record not
    delivered before it with the same error object, as kafka-python's abort of the undrained
    batches does, and the commit then fails.
    """

    def __init__(self, **config: Any) -> None:
        self.config = {"max_request_size": 1_048_576, **config}
        self.queued: list[tuple[Future, tuple[str, bytes | None, bytes]]] = []
        self.log: list[bytes] = []  # values delivered for good (committed, in a transaction)
        self.transaction: list[bytes] | None = None
        self.transaction_error: BaseException | None = None
        self.events: list[str] = []
        self.stall = False  # flush waits forever: nothing is acknowledged
        self.transient: BaseException | None = None  # the next flush fails every record so

    def init_transactions(self) -> None:
        pass

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> Future:
        future = Future()
        self.queued.append((future, (topic, key, value)))
        return future

    def flush(self, timeout: float | None = None) -> None:
        if self.stall:
            raise kafka_errors.KafkaTimeoutError("flush timed out")
        batch, self.queued = self.queued, []
        for future, (_, _, value) in batch:
            if self.transient is not None:
                future.failure(self.transient)
                if self.transaction is not None:
                    self.transaction_error = self.transient
            elif self.transaction_error is not None:
                future.failure(self.transaction_error)
            elif len(value) > BROKER_LIMIT:
                error = kafka_errors.MessageSizeTooLargeError("the batch is larger than max.message.bytes")
                future.failure(error)
                if self.transaction is not None:
                    self.transaction_error = error
            else:
                future.success(None)
                (self.transaction if self.transaction is not None else self.log).append(value)
        self.transient = None

    def begin_transaction(self) -> None:
        assert self.transaction is None, "a transaction is open already"
        self.transaction, self.transaction_error = [], None
        self.events.append("begin")

    def send_offsets_to_transaction(self, offsets: Any, group_metadata: Any) -> None:
        pass

    def commit_transaction(self) -> None:
        self.flush()
        if self.transaction_error is not None:
            raise kafka_errors.KafkaError(f"in an error state: {self.transaction_error}")
        assert self.transaction is not None
        self.log.extend(self.transaction)
        self.transaction = None
        self.events.append("commit")

    def abort_transaction(self) -> None:
        for future, _ in self.queued:
            future.failure(self.transaction_error or kafka_errors.TransactionAbortedError())
        self.queued = []
        self.transaction = self.transaction_error = None
        self.events.append("abort")

    def close(self, timeout: float | None = None) -> None:
        pass


@pytest.fixture
def kafka_python(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    monkeypatch.setattr(kafka_python_client, "KafkaConsumer", FakeKafkaConsumer)
    monkeypatch.setattr(kafka_python_sender, "KafkaProducer", FakeKafkaProducer)

    def connect(*, exactly_once: bool = False) -> kafka_python_client.KafkaPythonIO:
        return kafka_python_client.KafkaPythonIO(
            settings(exactly_once=exactly_once, client="kafka-python"),
            on_assigned=lambda _: None,
            on_revoked=lambda _: None,
        )

    yield connect


def test_kafka_python_a_record_the_broker_refuses_is_rejected_with_its_source(kafka_python) -> None:
    kafka = kafka_python()
    kafka.produce(OUT, b"k", b"fine", source=source(1))
    kafka.produce(OUT, b"k", BIG, source=source(2))
    kafka.produce(OUT, b"k", b"fine too", source=source(3))
    with pytest.raises(RecordsRejected) as caught:
        kafka.flush(1.0)
    [rejected] = caught.value.rejected
    assert (rejected.topic, rejected.source, rejected.code) == (OUT, source(2), RECORD_TOO_LARGE)
    assert "max.message.bytes" in rejected.detail
    assert kafka.producer.log == [b"fine", b"fine too"]
    kafka.produce(OUT, b"k", b"later", source=source(4))
    kafka.flush(1.0)  # the failure was reported once; the client goes on


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (kafka_errors.MessageSizeTooLargeError, RECORD_TOO_LARGE),
        (kafka_errors.RecordListTooLargeError, RECORD_TOO_LARGE),
        (kafka_errors.InvalidRecordError, INVALID_RECORD),
    ],
)
def test_kafka_python_permanent_errors_become_rejections(kafka_python, error: type, code: str) -> None:
    kafka = kafka_python()
    kafka.produce(OUT, b"k", b"v", source=source(9))
    kafka.producer.transient = error("refused")  # (transient only in the fake's naming)
    with pytest.raises(RecordsRejected) as caught:
        kafka.flush(1.0)
    assert [(r.source, r.code) for r in caught.value.rejected] == [(source(9), code)]


@pytest.mark.parametrize(
    "error",
    [
        kafka_errors.NotEnoughReplicasError("not enough replicas"),
        kafka_errors.KafkaConnectionError("connection lost"),
        kafka_errors.CorruptRecordError("crc mismatch"),  # a batch's checksum: Java retries it
        kafka_errors.InvalidTimestampError("clock skew"),  # the host's clock, not the record
        kafka_errors.TopicAuthorizationFailedError("not allowed"),
    ],
)
def test_kafka_python_other_errors_are_delivery_failures(kafka_python, error: BaseException) -> None:
    kafka = kafka_python()
    kafka.produce(OUT, b"k", b"v", source=source(1))
    kafka.producer.transient = error
    with pytest.raises(DeliveryFailed) as caught:
        kafka.flush(1.0)
    assert not isinstance(caught.value, RecordsRejected) and caught.value.rejected == ()


def test_kafka_python_a_refusal_among_other_failures_is_a_delivery_failure_carrying_it(kafka_python) -> None:
    kafka = kafka_python()
    kafka.produce(OUT, b"k", BIG, source=source(1))
    kafka.producer.flush()  # refused
    kafka.produce(OUT, b"k", b"v", source=source(2))
    kafka.producer.transient = kafka_errors.KafkaConnectionError("connection lost")
    with pytest.raises(DeliveryFailed) as caught:
        kafka.flush(1.0)
    assert not isinstance(caught.value, RecordsRejected)
    assert [r.source for r in caught.value.rejected] == [source(1)]


def test_kafka_python_records_failed_for_another_records_fault_are_not_sent_again(kafka_python) -> None:
    """kafka-python names the culprit itself, so at-least-once the client sends nothing again
    (and keeps no key or value for it): the innocent records are a failure of their own, which
    the service's rollback sends again, with the culprit dead-lettered."""
    kafka = kafka_python()
    for offset, value in enumerate([b"a", BIG, b"b"]):
        kafka.produce(OUT, b"k", value, source=source(offset))
    assert not any(isinstance(field, bytes) for entry in kafka.sender._pending for field in entry)
    innocent = kafka_errors.KafkaError(
        "Failed to append record because it was part of a batch which had one more more invalid records"
    )
    batch, kafka.producer.queued = kafka.producer.queued, []
    for future, (_, _, value) in batch:  # KIP-467: the broker names the culprit, fails the rest
        future.failure(kafka_errors.InvalidRecordError("null key") if value == BIG else innocent)
    with pytest.raises(DeliveryFailed) as caught:
        kafka.flush(1.0)
    assert not isinstance(caught.value, RecordsRejected)
    assert [(r.source, r.code) for r in caught.value.rejected] == [(source(1), INVALID_RECORD)]
    assert kafka.producer.queued == [] and kafka.producer.log == []  # nothing sent again


def test_kafka_python_records_still_in_flight_stay_tracked_after_a_rejection(kafka_python) -> None:
    kafka = kafka_python()
    kafka.produce(OUT, b"k", BIG, source=source(1))
    kafka.producer.flush()
    kafka.produce(OUT, b"k", b"in flight", source=source(2))  # not acknowledged yet
    kafka.producer.flush = lambda timeout=None: None  # a flush that returns with it in flight
    with pytest.raises(RecordsRejected):
        kafka.flush(1.0)
    with pytest.raises(DeliveryPending):
        kafka.flush(1.0)


def test_kafka_python_a_refused_record_fails_the_transaction_with_its_source(kafka_python) -> None:
    kafka = kafka_python(exactly_once=True)
    kafka.produce(OUT, b"k", b"a", source=source(1))
    kafka.produce(OUT, b"k", BIG, source=source(2))  # under the producer's limit, over the broker's
    with pytest.raises(RecordsRejected) as caught:
        kafka.commit({})
    assert [(r.source, r.code) for r in caught.value.rejected] == [(source(2), RECORD_TOO_LARGE)]
    kafka.abort()
    assert kafka.producer.log == []


def test_kafka_python_the_culprits_of_a_failed_transaction_are_found_by_trial(kafka_python) -> None:
    kafka = kafka_python(exactly_once=True)
    values = [b"a", b"b", BIG, b"c", b"d", BIG + b"y", b"e"]
    for offset, value in enumerate(values):
        kafka.produce(OUT, b"k", value, source=source(offset))
    producer = kafka.producer
    # The first refusal fails every record after it with the same error, as kafka-python does
    # with the batches a failed transaction had not sent.
    with pytest.raises(RecordsRejected) as caught:
        kafka.commit({})
    assert sorted(r.source for r in caught.value.rejected) == [source(2), source(5)]
    assert producer.log == []  # every trial transaction was aborted
    assert producer.events.count("begin") == producer.events.count("abort") + producer.events.count("commit")
    assert "commit" not in producer.events
    kafka.abort()  # as the service does: nothing left open
    assert producer.transaction is None


def test_kafka_python_a_trial_search_out_of_time_keeps_the_culprits_it_found(
    kafka_python, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = kafka_python(exactly_once=True)
    for offset, value in enumerate(CULPRITS_AT_BOTH_ENDS):
        kafka.produce(OUT, b"k", value, source=source(offset))
    one_second_per_flush(monkeypatch, kafka_python_sender, kafka.producer)
    monkeypatch.setattr(kafka_python_sender, "_ISOLATION_BUDGET_S", 3.5)
    with pytest.raises(DeliveryFailed) as caught:
        kafka.commit({})
    assert not isinstance(caught.value, RecordsRejected)  # the rest is unknown: roll back, retry
    assert [r.source for r in caught.value.rejected] == [source(0)]
    kafka.abort()
    assert kafka.producer.log == [] and kafka.producer.transaction is None


def test_kafka_python_a_transaction_failed_for_no_records_fault_is_a_plain_kafka_error(kafka_python) -> None:
    kafka = kafka_python(exactly_once=True)
    kafka.produce(OUT, b"k", b"a", source=source(1))
    kafka.producer.transient = kafka_errors.KafkaConnectionError("connection lost")
    with pytest.raises(KafkaIOError) as caught:
        kafka.commit({})
    assert not isinstance(caught.value, DeliveryFailed)  # the broker or the network: roll back


def test_kafka_python_exactly_once_refuses_an_oversized_record_at_produce_time(kafka_python) -> None:
    kafka = kafka_python(exactly_once=True)
    with pytest.raises(RecordsRejected) as caught:
        kafka.produce(OUT, b"k", b"x" * 1_100_000, source=source(5))
    assert caught.value.rejected[0].source == source(5)
    assert kafka.sender._held == []
    kafka.produce(OUT, b"k", b"x" * 1_000_000, source=source(6))
    assert [record[3] for record in kafka.sender._held] == [source(6)]
