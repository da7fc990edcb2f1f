"""Fixtures of the integration tests: one real embedded broker per test session, unique names per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from stream_lstm.broker import EmbeddedBroker, free_port
from stream_lstm.kafka_io import KAFKA_CLIENTS


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
