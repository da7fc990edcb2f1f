"""`stream-lstm demo`: the whole service on one machine, in one command.

Starts the embedded broker, creates the topics, runs `stream-lstm run` as a child process,
replays the generated multi-key stream into it at a steady rate, shows a live progress line read
from the service's /metrics, and at the end (or on Ctrl-C) prints the final comparison and stops
everything it started. Given a :class:`Cluster` (``--bootstrap-servers`` and the security
settings), it runs on that cluster instead, in topics of its own that it deletes at the end; the
service child reads the connection settings from a settings file only its user may read, which
the demo deletes at the end: secrets go neither on a command line nor into an environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

from stream_lstm.config.declared import SECURITY_SETTINGS
from stream_lstm.config.secret import Secret
from stream_lstm.evaluation.prequential import METRICS, MODEL_NAMES
from stream_lstm.evaluation.report import render_table
from stream_lstm.kafka.broker import EmbeddedBroker
from stream_lstm.kafka.broker_admin import BrokerError, create_topics, delete_topics
from stream_lstm.kafka.connect import EventWriter
from stream_lstm.kafka.security import PLAINTEXT, KafkaSecurity, security_from_settings
from stream_lstm.messages.events import encode_event
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.telemetry.progress import ProgressLine

TOPICS = {"input": "events", "output": "predictions", "dead": "dead-letters"}


@dataclass(frozen=True)
class Cluster:
    """A cluster of the user's to run the demo on, and how to connect to it."""

    bootstrap_servers: str
    client: str = "kafka-python"
    security: KafkaSecurity = PLAINTEXT
    #: The connection settings as a TOML settings file for the service child (secrets included).
    settings_toml: str = field(default="", repr=False)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> Cluster:
        lines = [f"kafka_client = {_toml(settings['kafka_client'])}"]
        for setting in SECURITY_SETTINGS:
            value = settings[setting.name]
            if value is None or value == ():
                continue
            if setting.repeated:
                items = ", ".join(_toml(f"{name}={_reveal(item)}") for name, item in value)
                lines.append(f"{setting.name} = [{items}]")
            else:
                lines.append(f"{setting.name} = {_toml(_reveal(value))}")
        return cls(
            bootstrap_servers=settings["bootstrap_servers"],
            client=settings["kafka_client"],
            security=security_from_settings(settings),
            settings_toml="\n".join(lines) + "\n",
        )

    def write_settings(self, folder: Path) -> Path:
        """The settings file, readable by this user alone (the caller deletes it)."""
        descriptor, path = tempfile.mkstemp(prefix=".demo-connection-", suffix=".toml", dir=folder)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:  # mkstemp: mode 0600
            out.write(self.settings_toml)
        return Path(path)


def _reveal(value: Any) -> Any:
    return value.reveal() if isinstance(value, Secret) else value


def _toml(value: Any) -> str:
    """A TOML value: a bool, or a string (JSON's escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(str(value))


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the service's /metrics, by name and labels; empty when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return parse_samples(text)


def parse_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _get(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), float("nan"))


def models_scraped(samples: dict) -> list[str]:
    """The models the service runs (those with a score in the scrape), in the usual order."""
    present = {dict(labels).get("model") for name, labels in samples if name == "stream_lstm_accuracy"}
    return [model for model in MODEL_NAMES if model in present]


def comparison_table(samples: dict) -> str:
    """Whole-stream scores and rolling accuracy of each model the service runs, from a scrape."""
    headers = ["model", *METRICS, "rolling accuracy"]
    rows = []
    for model in models_scraped(samples):
        cells = [f"{_get(samples, f'stream_lstm_{m}', model=model, scope='stream'):.4f}" for m in METRICS]
        rolling = _get(samples, "stream_lstm_accuracy", model=model, scope="rolling")
        rows.append([model, *cells, f"{rolling:.4f}"])
    return render_table(headers, rows)


def run_demo(
    *,
    events: int,
    keys: int,
    rate: float,
    workdir: Path,
    metrics_port: int,
    cluster: Cluster | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Run the demo (on the embedded broker, or on ``cluster``); return the exit status."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker(log_path=workdir / "broker.log") if cluster is None else None
    # On a cluster of the user's, topics and group of this run alone: nothing of theirs is touched.
    run_id = uuid.uuid4().hex[:8]
    topics = (
        TOPICS
        if cluster is None
        else {role: f"stream-lstm-demo-{run_id}-{name}" for role, name in TOPICS.items()}
    )
    group = "stream-lstm-demo" if cluster is None else f"stream-lstm-demo-{run_id}"
    created: list[str] = []
    connection_file: Path | None = None
    service: subprocess.Popen[bytes] | None = None
    interrupted = threading.Event()
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        if broker is not None:
            print(f"starting the embedded broker on {broker.bootstrap_servers} ...", file=out, flush=True)
            broker.start()
            broker.create_topics(list(topics.values()))
            bootstrap, client, security = broker.bootstrap_servers, "kafka-python", PLAINTEXT
        else:
            assert cluster is not None
            bootstrap, client, security = cluster.bootstrap_servers, cluster.client, cluster.security
            print(f"creating topics {', '.join(topics.values())} on {bootstrap} ...", file=out, flush=True)
            create_topics(
                bootstrap,
                list(topics.values()),
                1,
                60.0,
                raise_if_exited=lambda: None,
                security=security,
                replication_factor=-1,  # the cluster's default, which it may require to be over 1
            )
            created = list(topics.values())
        checkpoint_dir = workdir / "checkpoints"
        for stale in checkpoint_dir.glob("*.ckpt"):
            stale.unlink()  # the broker is new, so is the stream: start learning from scratch
        command = [
            sys.executable, "-m", "stream_lstm", "run",
            "--bootstrap-servers", bootstrap,
            "--input-topic", topics["input"], "--output-topic", topics["output"],
            "--dead-letter-topic", topics["dead"], "--group-id", group,
            "--checkpoint-dir", str(checkpoint_dir), "--metrics-port", str(metrics_port),
            "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "1000",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LSTM_")}
        if cluster is not None:
            connection_file = cluster.write_settings(workdir)
            command += ["--config", str(connection_file)]
        log_path = workdir / "service.log"
        with log_path.open("wb") as log:
            service = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        print(
            f"service started (log: {log_path}); metrics at http://127.0.0.1:{metrics_port}/metrics\n"
            f"replaying {events:,} generated events of {keys:,} keys at {rate:,.0f} events/s; Ctrl-C stops",
            file=out,
            flush=True,
        )
        producer = threading.Thread(
            target=_produce,
            args=(bootstrap, topics["input"], events, keys, rate, interrupted),
            kwargs={"client": client, "security": security},
            daemon=True,
        )
        producer.start()
        samples = _follow(metrics_port, events, service, interrupted, out)
        if service.poll() is not None:
            print(f"the service exited early ({service.returncode}); see {log_path}", file=out)
            return 1
        print("\nfinal comparison (prequential, whole stream):", file=out)
        print(comparison_table(samples), file=out, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=15)
            except subprocess.TimeoutExpired:
                service.kill()
        if connection_file is not None:
            connection_file.unlink(missing_ok=True)
        if broker is not None:
            broker.stop()
            print("stopped the service and the broker", file=out, flush=True)
        else:
            _delete_demo_topics(cluster, created, out)


def _delete_demo_topics(cluster: Cluster | None, created: list[str], out: TextIO) -> None:
    if cluster is None or not created:
        print("stopped the service", file=out, flush=True)
        return
    try:
        delete_topics(cluster.bootstrap_servers, created, security=cluster.security)
    except BrokerError as error:
        print(f"stopped the service; could not delete the demo's topics: {error}", file=out, flush=True)
    else:
        print(f"stopped the service and deleted the demo's topics {', '.join(created)}", file=out, flush=True)


def _produce(
    bootstrap: str,
    topic: str,
    events: int,
    keys: int,
    rate: float,
    interrupted: threading.Event,
    *,
    client: str = "kafka-python",
    security: KafkaSecurity = PLAINTEXT,
) -> None:
    writer = EventWriter(bootstrap, topic, client=client, security=security)
    started = time.monotonic()
    try:
        for sent, event in enumerate(temporal_stream(events, n_keys=keys, seed=1)):
            if interrupted.is_set():
                break
            delay = started + sent / rate - time.monotonic()
            if delay > 0:
                interrupted.wait(delay)  # pacing to the requested rate
            writer.send(event.key, encode_event(event))
    finally:
        writer.close()


def _status(samples: dict) -> str:
    parts = [
        f"{m} {_get(samples, 'stream_lstm_accuracy', model=m, scope='rolling'):.3f}"
        for m in models_scraped(samples)
    ]
    return "rolling acc: " + "  ".join(parts)


def _follow(
    port: int, total: int, service: subprocess.Popen[bytes], interrupted: threading.Event, out: TextIO
) -> dict:
    """Show progress from /metrics until every event is handled, the service dies, or Ctrl-C."""
    progress = ProgressLine(total, stream=out, interval=0.5)
    samples: dict = {}
    handled = 0
    while not interrupted.is_set() and service.poll() is None:
        latest = scrape(port)
        if latest:
            samples = latest
            handled = int(
                _get(samples, "stream_lstm_events_total", outcome="processed")
                + _get(samples, "stream_lstm_events_total", outcome="dead_lettered")
            )

            progress.update(handled, lambda scraped=samples: _status(scraped))
        if handled >= total:
            time.sleep(1.2)  # let the service publish its final scores (it does so every second)
            samples = scrape(port) or samples
            break
        interrupted.wait(0.5)
    progress.update(handled, force=True)
    progress.close()
    return samples
