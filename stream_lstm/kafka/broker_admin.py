"""Kafka requests to the embedded broker: is it up and is it ours, and creating topics on it.

The checks that :meth:`EmbeddedBroker.start <stream_lstm.kafka.broker.EmbeddedBroker.start>`
repeats until the broker is ready (:func:`accepts_connections`, :func:`probe_cluster_id`), and
:func:`create_topics`, which waits until every partition of the new topics has a leader. Also the
error of the broker, :class:`BrokerError`, which every module of the embedded broker raises
(:mod:`stream_lstm.kafka.broker` exports it).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from stream_lstm.errors import StreamLSTMError
from stream_lstm.kafka.security import PLAINTEXT, KafkaSecurity

#: Kafka error code of a CreateTopics result for a topic that already exists.
_TOPIC_ALREADY_EXISTS = 36


class BrokerError(StreamLSTMError):
    """The embedded broker could not be started, reached or asked to do something."""


def accepts_connections(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def probe_cluster_id(bootstrap_servers: str, budget: float) -> str | None:
    """Ask the broker for its cluster id with one DescribeCluster; ``None`` if it does not answer."""
    budget_ms = max(int(budget * 1000), 50)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            client_id="stream-lstm-broker-probe",
            bootstrap_timeout_ms=budget_ms,
            request_timeout_ms=budget_ms,
        )
    except (KafkaError, OSError):
        return None
    try:
        return str(admin.describe_cluster()["cluster_id"])
    except (KafkaError, OSError, KeyError):
        return None
    finally:
        admin.close()


def create_topics(
    bootstrap_servers: str,
    names: list[str],
    partitions: int,
    timeout: float,
    *,
    raise_if_exited: Callable[[], None],
    configs: dict[str, str] | None = None,
    security: KafkaSecurity = PLAINTEXT,
    replication_factor: int = 1,
) -> dict[str, int]:
    """Create the topics ``names`` (distinct, not empty) that are missing, and wait for them.

    See :meth:`EmbeddedBroker.create_topics <stream_lstm.kafka.broker.EmbeddedBroker.create_topics>`;
    ``raise_if_exited`` raises :class:`BrokerError` once the broker process has exited, so the
    wait for the metadata stops at once then. ``configs`` are the new topics' settings
    (``cleanup.policy``, say); ``security`` how to connect and ``replication_factor`` -1 for the
    cluster's default (``demo`` on a cluster of the user's).
    """
    deadline = time.monotonic() + timeout
    admin = _admin_client(bootstrap_servers, timeout, security)
    try:
        try:
            response = admin.create_topics(
                {
                    name: {
                        "num_partitions": partitions,
                        "replication_factor": replication_factor,
                        "configs": dict(configs or {}),
                    }
                    for name in names
                },
                timeout_ms=int(timeout * 1000),
                raise_errors=False,
            )
        except KafkaError as error:
            raise BrokerError(f"cannot create topics {names} on {bootstrap_servers}: {error}") from error
        created: set[str] = set()
        for result in response["topics"]:
            code = result["error_code"]
            if code == 0:
                created.add(result["name"])
            elif code != _TOPIC_ALREADY_EXISTS:
                raise BrokerError(
                    f"the broker refused to create topic {result['name']!r}: "
                    f"{result.get('error_message') or 'no message'} (Kafka error code {code})"
                )
        expected = {name: partitions for name in created}
        return _wait_for_topics(admin, bootstrap_servers, names, expected, deadline, timeout, raise_if_exited)
    finally:
        admin.close()


def _admin_client(bootstrap_servers: str, timeout: float, security: KafkaSecurity) -> KafkaAdminClient:
    """An admin client for the broker; :class:`BrokerError` if it is unreachable."""
    timeout_ms = max(int(timeout * 1000), 100)
    try:
        defaults = {
            "bootstrap_servers": bootstrap_servers,
            "client_id": "stream-lstm-broker-admin",
            "bootstrap_timeout_ms": timeout_ms,
            "request_timeout_ms": timeout_ms,
        }
        return KafkaAdminClient(**security.kafka_python_config(KafkaAdminClient.DEFAULT_CONFIG, defaults))
    except (KafkaError, OSError) as error:
        raise BrokerError(f"cannot reach the broker on {bootstrap_servers}: {error}") from error


def _wait_for_topics(
    admin: KafkaAdminClient,
    bootstrap_servers: str,
    names: list[str],
    expected: dict[str, int],
    deadline: float,
    timeout: float,
    raise_if_exited: Callable[[], None],
) -> dict[str, int]:
    """Poll topic metadata until every topic has a leader per partition (and the expected count)."""
    pause = 0.005
    last: Any = None
    while True:
        try:
            last = admin.describe_topics(names)
        except KafkaError as error:
            last = error
        else:
            counts = _ready_partition_counts(last)
            if all(name in counts for name in names) and all(
                counts[name] == count for name, count in expected.items()
            ):
                return {name: counts[name] for name in names}
        raise_if_exited()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"topics {names} were not visible on {bootstrap_servers} within {timeout:g} s "
                f"(last metadata: {last})"
            )
        time.sleep(min(pause, remaining))  # polling interval, bounded by the deadline
        pause = min(pause * 2, 0.2)


def _ready_partition_counts(metadata: list[dict[str, Any]]) -> dict[str, int]:
    """Partition counts of the described topics that exist and have a leader for every partition."""
    counts: dict[str, int] = {}
    for topic in metadata:
        partitions = topic.get("partitions") or []
        if (
            topic.get("error_code") == 0
            and partitions
            and all(p.get("error_code") == 0 and p.get("leader_id", -1) >= 0 for p in partitions)
        ):
            counts[topic["name"]] = len(partitions)
    return counts


def delete_topics(
    bootstrap_servers: str, names: list[str], *, timeout: float = 10.0, security: KafkaSecurity = PLAINTEXT
) -> None:
    """Delete the topics ``names`` (``demo`` on a cluster of the user's cleans up after itself)."""
    admin = _admin_client(bootstrap_servers, timeout, security)
    try:
        admin.delete_topics(names, timeout_ms=int(timeout * 1000))
    except KafkaError as error:
        raise BrokerError(f"cannot delete topics {names} on {bootstrap_servers}: {error}") from error
    finally:
        admin.close()
