"""`stream-lstm demo`: the whole service on one machine, in one command.

Starts the embedded broker, creates the topics, runs `stream-lstm run` as a child process,
replays the generated multi-key stream into it at a steady rate, shows a live progress line read
from the service's /metrics, and at the end (or on Ctrl-C) prints the final comparison and stops
everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

from stream_lstm.evaluation.prequential import METRICS, MODEL_NAMES
from stream_lstm.evaluation.report import render_table
from stream_lstm.kafka.broker import EmbeddedBroker
from stream_lstm.kafka.connect import EventWriter
from stream_lstm.messages.events import encode_event
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.telemetry.progress import ProgressLine

TOPICS = {"input": "events", "output": "predictions", "dead": "dead-letters"}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the service's /metrics, by name and labels; empty when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _get(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), float("nan"))


def comparison_table(samples: dict) -> str:
    """Whole-stream scores and rolling accuracy of each model, from a scrape."""
    headers = ["model", *METRICS, "rolling accuracy"]
    rows = []
    for model in MODEL_NAMES:
        cells = [f"{_get(samples, f'stream_lstm_{m}', model=model, scope='stream'):.4f}" for m in METRICS]
        rolling = _get(samples, "stream_lstm_accuracy", model=model, scope="rolling")
        rows.append([model, *cells, f"{rolling:.4f}"])
    return render_table(headers, rows)


def run_demo(
    *, events: int, keys: int, rate: float, workdir: Path, metrics_port: int, out: TextIO = sys.stdout
) -> int:
    """Run the demo; return the exit status."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker(log_path=workdir / "broker.log")
    service: subprocess.Popen[bytes] | None = None
    interrupted = threading.Event()
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        print(f"starting the embedded broker on {broker.bootstrap_servers} ...", file=out, flush=True)
        broker.start()
        broker.create_topics(list(TOPICS.values()))
        checkpoint_dir = workdir / "checkpoints"
        for stale in checkpoint_dir.glob("*.ckpt"):
            stale.unlink()  # the broker is new, so is the stream: start learning from scratch
        command = [
            sys.executable, "-m", "stream_lstm", "run",
            "--bootstrap-servers", broker.bootstrap_servers,
            "--input-topic", TOPICS["input"], "--output-topic", TOPICS["output"],
            "--dead-letter-topic", TOPICS["dead"], "--group-id", "stream-lstm-demo",
            "--checkpoint-dir", str(checkpoint_dir), "--metrics-port", str(metrics_port),
            "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "1000",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LSTM_")}
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
            target=_produce, args=(broker.bootstrap_servers, events, keys, rate, interrupted), daemon=True
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
        broker.stop()
        print("stopped the service and the broker", file=out, flush=True)


def _produce(bootstrap: str, events: int, keys: int, rate: float, interrupted: threading.Event) -> None:
    writer = EventWriter(bootstrap, TOPICS["input"])
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
        f"{m} {_get(samples, 'stream_lstm_accuracy', model=m, scope='rolling'):.3f}" for m in MODEL_NAMES
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
