"""Which failed deliveries are refused for good, and which input each stands for (issue 15).

The embedded broker enforces no size limit, so the broker's own refusals (which come back
asynchronously, in delivery reports) are played here by fake producers that behave as each
library does: kafka-python splits a batch the broker finds too large until the culprit stands
alone, but fails the batches it had not sent when a transaction fails, with the same error;
librdkafka does not split, so every record of the refused batch gets the error. The clients are
the real ones; only the library's producer and consumer objects are fakes (and, where a test runs
the clients' search for culprits out of time, the clock).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import errors as kafka_errors
from kafka.future import Future

from stream_lstm.kafka import kafka_python as kafka_python_client
from stream_lstm.kafka.interface import (
    INVALID_RECORD,
    RECORD_TOO_LARGE,
    DeliveryFailed,
    DeliveryPending,
    KafkaIOError,
    KafkaSettings,
    RecordsRejected,
    RejectedRecord,
    delivery_failure,
    isolate_rejected,
    rejected_record,
)

#: The fake brokers refuse any record whose value is longer than this.
BROKER_LIMIT = 100
BIG = b"x" * (BROKER_LIMIT + 1)
OUT = "out"


def settings(*, exactly_once: bool, client: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers="127.0.0.1:1",
        input_topic="in",
        output_topic=OUT,
        dead_letter_topic="dead",
        group_id="g",
        exactly_once=exactly_once,
        transactional_id="t" if exactly_once else None,
        client=client,
    )


def source(offset: int) -> tuple[str, int, int]:
    return ("in", 0, offset)


class Clock:
    """Stands for a client module's ``time``: it moves on only when the producer flushes."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def one_second_per_flush(monkeypatch: pytest.MonkeyPatch, module: Any, producer: Any) -> None:
    """Make each flush of ``producer`` take a second of ``module``'s time."""
    clock = Clock()
    monkeypatch.setattr(module, "time", clock)
    flush = producer.flush

    def slow_flush(*args: Any, **kwargs: Any) -> Any:
        clock.now += 1.0
        return flush(*args, **kwargs)

    producer.flush = slow_flush


#: Two culprits, one at each end: a search out of time after four sends has found only the first
#: (sends: all six, the first half, its culprit alone, the innocent rest of that half).
CULPRITS_AT_BOTH_ENDS = [BIG, b"a", b"b", b"c", b"d", BIG + b"y"]


# ---------------------------------------------------------------------------------- kafka_io


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


# ---------------------------------------------------------------------------------- kafka-python


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
    monkeypatch.setattr(kafka_python_client, "KafkaProducer", FakeKafkaProducer)

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
    assert not any(isinstance(field, bytes) for entry in kafka._pending for field in entry)
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
    one_second_per_flush(monkeypatch, kafka_python_client, kafka.producer)
    monkeypatch.setattr(kafka_python_client, "_ISOLATION_BUDGET_S", 3.5)
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
    assert kafka._held == []
    kafka.produce(OUT, b"k", b"x" * 1_000_000, source=source(6))
    assert [record[3] for record in kafka._held] == [source(6)]


# ---------------------------------------------------------------------------------- confluent

confluent_kafka = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")
KafkaError, KafkaException = confluent_kafka.KafkaError, confluent_kafka.KafkaException

from stream_lstm.kafka import confluent as confluent_client  # noqa: E402


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

    monkeypatch.setattr(confluent_client, "_create", create)

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
    one_second_per_flush(monkeypatch, confluent_client, kafka.producer)
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
    one_second_per_flush(monkeypatch, confluent_client, kafka.producer)
    monkeypatch.setattr(confluent_client, "_ISOLATION_BUDGET_S", 3.5)
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
    assert [record[3] for record in kafka._held] == [source(6)]
