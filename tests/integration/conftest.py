"""Fixtures of the integration tests: one real embedded broker per test session, unique names per test."""

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
from tests.integration.service_harness import ServiceProcess


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
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
def topics(broker: EmbeddedBroker) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    names = {"input": f"in-{suffix}", "output": f"out-{suffix}", "dead": f"dead-{suffix}"}
    broker.create_topics(list(names.values()), partitions=1)
    return names


@pytest.fixture
def service_factory(
    broker: EmbeddedBroker, topics: dict[str, str], group_id: str, tmp_path: Path, kafka_client: str
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
