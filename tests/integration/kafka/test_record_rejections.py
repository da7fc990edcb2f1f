"""A record the producer refuses for good is a :class:`RecordsRejected` naming its source, and the
client goes on (issue 15), with both client libraries, on the embedded broker.

The embedded broker (Tansu 0.6) enforces no record size limit at all (neither a topic's
``max.message.bytes`` nor any default: it stores a 120 MB record), so the refusals the broker
itself makes (asynchronous, in delivery reports) are tested with fakes in
``tests/unit/kafka/test_kafka_python_rejections.py`` and
``tests/unit/kafka/test_confluent_rejections.py``; here it is the producer's own limit, which both
libraries check when the record is produced.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, TopicPartition

from stream_lstm.kafka.connect import open_kafka
from stream_lstm.kafka.interface import (
    RECORD_TOO_LARGE,
    DeliveryFailed,
    KafkaClient,
    KafkaSettings,
    RecordsRejected,
)
from tests.integration.conftest import Broker

pytestmark = pytest.mark.slow

#: Over both producers' limits (kafka-python: max_request_size 1 MiB; librdkafka:
#: message.max.bytes 1,000,000) but a valid record otherwise.
OVERSIZED = b"x" * 1_100_000


@pytest.fixture
def topics(broker: Broker, topic_name: str) -> dict[str, str]:
    names = {"input": f"{topic_name}-in", "output": f"{topic_name}-out", "dead": f"{topic_name}-dead"}
    broker.create_topics(list(names.values()))
    return names


def connect(
    broker: Broker, topics: dict[str, str], group_id: str, client: str, *, exactly_once: bool
) -> KafkaClient:
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        input_topic=topics["input"],
        output_topic=topics["output"],
        dead_letter_topic=topics["dead"],
        group_id=group_id,
        exactly_once=exactly_once,
        transactional_id=f"{group_id}-tx" if exactly_once else None,
        client=client,
    )
    return open_kafka(settings, on_assigned=lambda _: None, on_revoked=lambda _: None)


@pytest.fixture(params=[False, True], ids=["at-least-once", "exactly-once"])
def kafka(
    request: pytest.FixtureRequest,
    broker: Broker,
    topics: dict[str, str],
    group_id: str,
    kafka_client: str,
) -> Iterator[KafkaClient]:
    client = connect(broker, topics, group_id, kafka_client, exactly_once=request.param)
    try:
        yield client
    finally:
        client.close()


def settle(kafka: KafkaClient) -> None:
    """Deliver what was produced: flush, and commit the transaction (a no-op without one)."""
    kafka.flush(10.0)
    kafka.commit({})


def read_values(bootstrap: str, topic: str, expected: int, timeout: float = 20.0) -> list[bytes]:
    """Every committed value of ``topic`` (one partition), once ``expected`` of them are there."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        consumer_timeout_ms=500,
        max_partition_fetch_bytes=2_000_000,
    )
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(values) < expected and time.monotonic() < deadline:
            values.extend(record.value for record in consumer)
        values.extend(record.value for record in consumer)  # anything beyond: a failure below
        return values
    finally:
        consumer.close()


def test_an_oversized_record_is_rejected_with_its_source_and_the_client_goes_on(
    broker: Broker, topics: dict[str, str], kafka: KafkaClient
) -> None:
    out = topics["output"]
    with pytest.raises(RecordsRejected) as caught:
        kafka.produce(out, b"key", OVERSIZED, source=(topics["input"], 0, 41))
    [rejected] = caught.value.rejected
    assert (rejected.topic, rejected.source, rejected.code) == (
        out,
        (topics["input"], 0, 41),
        RECORD_TOO_LARGE,
    )
    assert 0 < len(rejected.detail) <= 300
    assert isinstance(caught.value, DeliveryFailed)  # what callers that know no better catch

    kafka.produce(out, b"key", b"a normal record", source=(topics["input"], 0, 42))
    settle(kafka)
    assert read_values(broker.bootstrap_servers, out, expected=1) == [b"a normal record"]


def test_a_refused_record_leaves_the_records_around_it_alone(
    broker: Broker, topics: dict[str, str], kafka: KafkaClient
) -> None:
    out = topics["output"]
    kafka.produce(out, b"k", b"before", source=(topics["input"], 0, 1))
    with pytest.raises(RecordsRejected):
        kafka.produce(out, None, OVERSIZED, source=(topics["input"], 0, 2))
    with pytest.raises(RecordsRejected) as caught:
        kafka.produce(topics["dead"], b"k", OVERSIZED)  # no source: it comes back as None
    assert caught.value.rejected[0].source is None
    kafka.produce(out, b"k", b"after", source=(topics["input"], 0, 3))
    settle(kafka)
    assert read_values(broker.bootstrap_servers, out, expected=2) == [b"before", b"after"]


def largest_value_accepted(kafka: KafkaClient, topic: str, key: bytes) -> int:
    """The largest value the library itself lets ``produce`` queue with ``key`` (at-least-once)."""
    low, high = 900_000, 1_100_000  # accepted, refused
    while high - low > 1:
        middle = (low + high) // 2
        try:
            kafka.produce(topic, key, b"v" * middle)
        except RecordsRejected:
            high = middle
        else:
            low = middle
    return low


def test_exactly_once_refuses_at_produce_time_exactly_what_the_library_refuses(
    broker: Broker, topics: dict[str, str], group_id: str, kafka_client: str
) -> None:
    key = b"some-entity-key"
    plain = connect(broker, topics, group_id, kafka_client, exactly_once=False)
    try:
        limit = largest_value_accepted(plain, topics["dead"], key)
        plain.flush(30.0)
    finally:
        plain.close()

    transactional = connect(broker, topics, group_id, kafka_client, exactly_once=True)
    try:
        with pytest.raises(RecordsRejected) as caught:
            transactional.produce(topics["output"], key, b"v" * (limit + 1), source=(topics["input"], 3, 7))
        assert caught.value.rejected[0].source == (topics["input"], 3, 7)
        transactional.produce(topics["output"], key, b"v" * limit, source=(topics["input"], 3, 8))
        transactional.commit({})  # the largest record the library takes goes through the transaction
    finally:
        transactional.close()
    assert [len(value) for value in read_values(broker.bootstrap_servers, topics["output"], 1)] == [limit]


def test_the_trials_that_find_culprits_work_with_the_real_library(
    broker: Broker, topics: dict[str, str], kafka: KafkaClient, kafka_client: str
) -> None:
    """The broker never refuses here, so no culprit is found; what is checked is that the calls
    the clients make to find one (sending again, trial transactions aborted) work with the real
    library and broker, and leave the client as usable as before.

    kafka-python at-least-once sends nothing again (it names the failed record itself), so it
    has no trials. The aborted trial transactions should be invisible to a read_committed reader,
    but the embedded broker (Tansu 0.6) delivers aborted records to such readers too: so either
    only the committed record is read, or the trials' records come first, in the order sent.
    """
    exactly_once = kafka.settings.exactly_once  # type: ignore[attr-defined]
    if kafka_client == "kafka-python" and not exactly_once:
        pytest.skip("kafka-python at-least-once sends no record again: no trials to check")
    out = topics["output"]
    records = [(out, b"k", b"trial %d" % i, (topics["input"], 0, i)) for i in range(5)]
    trials = [value for _, _, value, _ in records]
    deadline = time.monotonic() + 10.0
    if exactly_once:
        assert kafka.sender._probe(records, deadline) == []  # type: ignore[attr-defined]
        assert kafka.sender._probe(records[:1], deadline) == []  # type: ignore[attr-defined]
        assert not kafka.sender._in_transaction  # type: ignore[attr-defined]
    else:
        assert kafka.sender._send_and_wait(records, deadline) == []  # type: ignore[attr-defined]
    kafka.produce(out, b"k", b"after", source=(topics["input"], 0, 9))
    settle(kafka)
    if exactly_once:
        values = read_values(broker.bootstrap_servers, out, expected=1)
        assert values in ([b"after"], trials + trials[:1] + [b"after"])
    else:  # sent again outside a transaction: delivered
        assert read_values(broker.bootstrap_servers, out, expected=6) == [*trials, b"after"]
