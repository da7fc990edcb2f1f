"""Fixtures of the integration tests: real brokers, one of each per test session, unique names per test.

Every test that takes ``broker`` runs twice: on Apache Kafka (a KRaft broker from Maven Central,
id ``apache-kafka``) and on the embedded Tansu broker (id ``tansu``), so ``pytest -k apache-kafka``
runs the first half. Tests about one broker take ``apache_kafka`` or ``tansu`` instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stream_lstm.kafka.broker import EmbeddedBroker, free_port
from stream_lstm.kafka.interface import KAFKA_CLIENTS
from stream_lstm.state.directory_store import DirectoryStore, default_instance_id
from stream_lstm.testing.apache_kafka import ApacheKafkaBroker
from stream_lstm.testing.kafka_jars import KafkaJarsUnavailable
from tests.deploy.external_tools import missing
from tests.integration.service_harness import ServiceProcess

#: The ids of the ``broker`` fixture's parameters, Apache Kafka (the reference) first.
BROKERS = ("apache-kafka", "tansu")

#: Either broker: what the tests use of them is the same.
Broker = ApacheKafkaBroker | EmbeddedBroker


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A running Tansu broker on a free port, shared by the session; its log is in a temp dir.

    Tests share it, so they must use their own topics and groups (see ``topic_name`` and
    ``group_id``) and must not stop or restart it; tests of the life cycle start their own.
    """
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    embedded = EmbeddedBroker(port=free_port(), log_path=log_path)
    embedded.start(timeout=30.0)
    try:
        yield embedded
    finally:
        embedded.stop()


def start_apache_kafka(folder: Path, **options: Any) -> ApacheKafkaBroker:
    """A started Apache Kafka broker in ``folder``; the test is skipped without Java or Maven
    (failed where ``CI`` is set, as a missing Prometheus is)."""
    kafka = ApacheKafkaBroker(folder, **options)
    try:
        kafka.start()
    except KafkaJarsUnavailable as unavailable:
        missing(f"Apache Kafka cannot run here: {unavailable}")
    return kafka


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafkaBroker]:
    """A running Apache Kafka broker shared by the session, as ``tansu`` is; it must not be stopped."""
    kafka = start_apache_kafka(tmp_path_factory.mktemp("apache-kafka"))
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture
def own_apache_kafka(tmp_path: Path) -> Iterator[ApacheKafkaBroker]:
    """An Apache Kafka broker of the test's own, for tests that stop, kill or restart it."""
    kafka = start_apache_kafka(tmp_path / "apache-kafka")
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="session", params=BROKERS)
def broker(request: pytest.FixtureRequest) -> Broker:
    """The session's Apache Kafka broker, then its Tansu broker: tests on it run on both."""
    fixture = "apache_kafka" if request.param == "apache-kafka" else "tansu"
    return request.getfixturevalue(fixture)


@pytest.fixture
def topic_name() -> str:
    """A topic name no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def group_id() -> str:
    """A consumer-group id no other test uses."""
    return f"group-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=KAFKA_CLIENTS)
def kafka_client(request: pytest.FixtureRequest) -> str:
    """Each Kafka-facing service test runs once per client library (``--kafka-client``)."""
    if request.param == "confluent":
        pytest.importorskip(
            "confluent_kafka", reason="confluent-kafka is not installed (the dev extra has it)"
        )
    return request.param


@pytest.fixture
def topics(broker: Broker) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    names = {"input": f"in-{suffix}", "output": f"out-{suffix}", "dead": f"dead-{suffix}"}
    broker.create_topics(list(names.values()), partitions=1)
    return names


@pytest.fixture
def service_factory(
    broker: Broker, topics: dict[str, str], group_id: str, tmp_path: Path, kafka_client: str
) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def make(*extra: str, bootstrap: str | None = None) -> ServiceProcess:
        service = ServiceProcess(
            bootstrap or broker.bootstrap_servers,
            topics,
            group_id,
            tmp_path,
            "--kafka-client",
            kafka_client,
            *extra,
        )
        started.append(service)
        return service

    yield make
    for service in started:
        service.cleanup()


def checkpoint_of(tmp_path: Path) -> Any:
    """What the (one) service left in its checkpoint store: offsets, counts and its learner."""
    store = DirectoryStore(tmp_path / "checkpoints")
    partitions = {p: store.load_partition(p) for p in store.partitions()}
    instance = store.load_instance(default_instance_id())
    return SimpleNamespace(
        offsets={p: state.offset for p, state in partitions.items()},
        processed={p: state.events + state.dead_letters for p, state in partitions.items()},
        evaluator=instance.evaluator if instance is not None else None,
    )
