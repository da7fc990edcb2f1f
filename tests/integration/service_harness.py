"""Helpers for driving a real `stream-lstm run` process against the embedded broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from stream_lstm.kafka.broker import free_port
from stream_lstm.kafka.broker_process import BrokerProcess
from stream_lstm.kafka.connect import EventWriter
from stream_lstm.messages.events import Event, encode_event
from tests.waiting import wait_for

__all__ = ["wait_for"]  # the service tests import it from here

FAST_GROUP = [
    "--session-timeout-ms",
    "6000",
    "--heartbeat-interval-ms",
    "1000",
    "--max-poll-interval-ms",
    "5000",
]


def broker_state(broker: BrokerProcess) -> str:
    """Whether ``broker`` runs, and the end of its log: for the message of a failed wait."""
    state = "running" if broker.running else f"not running (exit status {broker.returncode})"
    path = broker.log_path
    tail = path.read_text(errors="replace").splitlines()[-20:] if path is not None and path.is_file() else []
    return f"the broker is {state}; the end of its log:\n" + "\n".join(tail)


def produce(bootstrap: str, topic: str, events: Iterable[Event]) -> int:
    writer = EventWriter(bootstrap, topic)
    count = 0
    for event in events:
        writer.send(event.key, encode_event(event))
        count += 1
    writer.close()
    return count


def produce_raw(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush(30)
    producer.close()


def produce_steadily(
    bootstrap: str, topic: str, events: list[Event], rate: float, stop: threading.Event
) -> threading.Thread:
    """Produce ``events`` at about ``rate`` events/s from a background thread."""

    def run() -> None:
        writer = EventWriter(bootstrap, topic, linger_ms=5)
        started = time.monotonic()
        for i, event in enumerate(events):
            if stop.is_set():
                break
            writer.send(event.key, encode_event(event))
            ahead = (i + 1) / rate - (time.monotonic() - started)
            if ahead > 0:
                stop.wait(ahead)
        writer.close()

    thread = threading.Thread(target=run, name="producer", daemon=True)
    thread.start()
    return thread


class TopicReader:
    """Reads a whole topic from the beginning (no group), accumulating what it has seen."""

    def __init__(self, bootstrap: str, topic: str, *, read_committed: bool = False) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            consumer_timeout_ms=200,
        )
        partitions = self.consumer.partitions_for_topic(topic) or {0}
        self.consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        self.consumer.seek_to_beginning()
        self.records: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        for batch in self.consumer.poll(timeout_ms=200, max_records=10_000).values():
            self.records.extend(json.loads(record.value) for record in batch)
        return self.records

    def read_until(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float,
        what: str | Callable[[], str],
    ) -> list[dict]:
        return wait_for(lambda: predicate(self.read()) and self.records, timeout, what)

    def close(self) -> None:
        self.consumer.close()


def source_offsets(records: list[dict[str, Any]]) -> list[int]:
    return [record["source"]["offset"] for record in records]


class ServiceProcess:
    """One `stream-lstm run` subprocess with its own checkpoint directory and metrics port."""

    def __init__(
        self,
        bootstrap: str,
        topics: dict[str, str],
        group_id: str,
        workdir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.extra_env = dict(env or {})
        self.metrics_port = free_port()
        self.log_path = workdir / f"service-{time.monotonic_ns()}.log"
        self.args = [
            sys.executable, "-m", "stream_lstm", "run",
            "--bootstrap-servers", bootstrap,
            "--input-topic", topics["input"],
            "--output-topic", topics["output"],
            "--dead-letter-topic", topics["dead"],
            "--group-id", group_id,
            "--checkpoint-dir", str(workdir / "checkpoints"),
            "--metrics-port", str(self.metrics_port),
            "--metrics-host", "127.0.0.1",
            "--device", "cpu",
            "--hidden-size", "16",
            *FAST_GROUP,
            *extra,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.metrics_port = free_port()
        index = self.args.index("--metrics-port") + 1
        self.args[index] = str(self.metrics_port)
        self.log_path = self.workdir / f"service-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LSTM_")}
        env.update(self.extra_env)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> tuple[int, dict[str, Any]] | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2
            ) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as response:
            return response.read().decode()

    def metric(self, name: str) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = self.metrics()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return sample.value
        return None

    def quoting_log(self, what: str) -> Callable[[], str]:
        """``what`` and this service's log as it is when a wait fails (a message for :func:`wait_for`)."""
        return lambda: f"{what}; log:\n{self.log()}"

    def wait_ready(self, timeout: float = 60.0, also: Callable[[], str] | None = None) -> None:
        """Wait for /healthz to say ready; on timeout, quote the log (and ``also()``, what else
        may explain it) as they are then."""

        def ready() -> bool:
            self.assert_alive()
            status = self.health()
            return status is not None and status[0] == 200

        def described() -> str:
            extra = f"\n{also()}" if also is not None else ""
            return f"the service to report ready; log:\n{self.log()}{extra}"

        wait_for(ready, timeout, described)

    def assert_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"service exited with {self.process.returncode}; log:\n{self.log()}")

    def terminate(self, timeout: float = 10.0) -> float:
        """SIGTERM and wait; return the seconds it took to exit."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"service did not stop within {timeout} s; log:\n{self.log()}") from None
        return time.monotonic() - started

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
