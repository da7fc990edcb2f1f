"""``run`` says in its own log that it cannot reach Kafka, again when the cause changes, and when it can."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from stream_lstm.kafka.broker import EmbeddedBroker
from tests.integration.service_harness import ServiceProcess, wait_for

pytestmark = pytest.mark.slow


def test_the_service_logs_why_it_cannot_reach_kafka_at_start_on_each_change_and_when_it_can(
    tmp_path: Path, group_id: str
) -> None:
    topics = {"input": "later-in", "output": "later-out", "dead": "later-dead"}
    bound = socket.socket()
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    bound.bind(("127.0.0.1", 0))  # bound, not listening: every connection is refused
    server = f"127.0.0.1:{bound.getsockname()[1]}"
    service = ServiceProcess(server, topics, group_id, tmp_path).start()
    broker: EmbeddedBroker | None = None
    try:

        def logged(pattern: str) -> re.Match[str] | None:
            service.assert_alive()
            return re.search(pattern, service.log(), re.MULTILINE)

        prefix = rf"^\S+ \S+ WARNING stream_lstm\.service\.connection_watch: cannot reach Kafka at {server}: "
        wait_for(
            lambda: logged(prefix + rf"nothing accepts connections on {server}: .* \[unreachable\]$"),
            60,
            f"the service to log that nothing listens at {server}",
        )
        bound.listen(16)  # now something accepts connections, and never answers
        wait_for(
            lambda: logged(prefix + rf"{server} did not answer ApiVersions within .* \[timeout\]$"),
            60,
            "the service to log the new cause",
        )
        bound.close()
        broker = EmbeddedBroker(port=int(server.rpartition(":")[2]), log_path=tmp_path / "broker.log")
        broker.start(timeout=30)
        wait_for(
            lambda: logged(
                rf"INFO stream_lstm\.service\.connection_watch: Kafka at {server} is reachable again$"
            ),
            60,
            "the service to log that Kafka is reachable again",
        )
        assert service.terminate(timeout=20) < 20
    finally:
        bound.close()
        service.cleanup()
        if broker is not None:
            broker.stop()
