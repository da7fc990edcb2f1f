"""Service latency: p50/p99 from an event's broker timestamp to its prediction, by batch size.

Why: throughput benchmarks (bench_service.py) feed the service a backlog, so they say nothing
about how long one event waits for its prediction while the service keeps up. Here a steady
stream (``--rate``, default 500 events/s, 1,000 keys, one partition) goes through a real
``stream-lstm run`` process on the embedded broker (Tansu), once per ``--batch-size``, and through
a pass-through relay (the same client, no models) for the I/O floor.

What is measured. For every input event: the CreateTime of its prediction record (stamped by the
service's producer when the record is handed to it, right after the batch's forward pass and
before the batch is learned; the record reaches the broker up to the producer's ``linger_ms`` of
5 ms later) minus the CreateTime of the input record (stamped by this script's producer, which
does not linger, when it sends the event; Tansu ignores ``message.timestamp.type=LogAppendTime``,
so there is no broker-side append time). Both clocks are this machine's. The input topic is read
back after the run and each prediction is matched to its input by its ``source`` offset. Events
sent in the first ``--warmup`` seconds of the steady phase are not counted.

The broker's share. Tansu answers a fetch that finds no new records only when the consumer's
``fetch_max_wait_ms`` has (about) run out, even when records arrive meanwhile (Apache Kafka
answers as soon as ``fetch_min_bytes``, 1 byte, is there). A consumer that has caught up, which
is what keeping up means, sends its next fetch at once, finds nothing and waits: events wait up
to ``--fetch-max-wait-ms`` for the fetch that brings them (kafka-python's own default is 500 ms;
the service's is 100 ms for this reason). So runs are made per fetch wait (``--fetch-waits``,
default 100,10): the service as shipped, and at 10 ms, closer to what it would see on Apache
Kafka.

How the service forms batches. It does not wait to fill ``--batch-size``: a batch is what one
consumer poll returns, at most ``--batch-size`` records (``poll(max_records=batch_size)``, 0.2 s
poll timeout), so a batch holds what arrived since the previous fetch, and a larger
``--batch-size`` changes nothing until the limit binds: when the service falls behind, when a
fetch brings more than that (one per fetch wait at most), and always at batch size 1,
which also caps the rate the service can sustain far below that of larger batches.

Columns. "mean batch": events per batch actually formed (predictions that share a
``model_step``). "input ack": the input records' own delay from their CreateTime to the broker's
acknowledgement (large only when this machine is too busy to measure the service alone).
"predict", "learn": the service's mean time per batch in those stages over the measured window,
and "busy" the share of the window spent in all its batch stages (decode, predict, produce, learn,
checkpoint: ``stream_lstm_batch_stage_seconds``); polls come on top, so near 100% it is saturated.
"kept up": whether latency stayed level (the median latency of the window's last fifth at most
0.5 s above its first fifth's); where it did not, the service was saturated and the percentiles
grow with ``--seconds``.

Usage: ``python benchmarks/bench_latency.py [--batch-sizes 1,16,64,256] [--rate 500]
[--seconds 15] [--warmup 3] [--keys 1000] [--fetch-waits 100,10] [--no-relay] [--markdown OUT.md]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from machine import append_results, describe_machine

from stream_lstm.evaluation.report import render_table
from stream_lstm.kafka.broker import EmbeddedBroker, free_port
from stream_lstm.messages.events import encode_event
from stream_lstm.offline.generator import temporal_stream

#: Events sent before the steady phase, to see that the consumer is in place and answering.
PRIMING_EVENTS = 20

#: The service's batch stages, as labelled in stream_lstm_batch_stage_seconds.
STAGES = ("decode", "predict", "produce", "learn", "checkpoint")

#: The batch size of the relay rows (the service's default).
RELAY_BATCH = 64

#: The service's default --fetch-max-wait-ms.
DEFAULT_FETCH_WAIT_MS = 100

#: A run kept up unless the median latency of the window's last fifth exceeds its first fifth's by more.
KEPT_UP_GROWTH_MS = 500

PROCESSED = 'stream_lstm_events_total{outcome="processed"}'


@dataclass
class Result:
    """One run's measurements."""

    run: str  # "service" or "relay"
    batch_size: int
    fetch_wait_ms: int
    sent: int  # events sent in the measured window
    rate: float  # achieved input rate over the measured window, events/s
    latencies_ms: np.ndarray  # per measured event that got a prediction, in input order
    ack_ms: np.ndarray  # per measured event: from its CreateTime to the broker's acknowledgement
    batches: int  # batches those events were predicted in
    max_batch: int
    stage_ms: dict[str, float]  # mean milliseconds per batch in each stage over the window
    busy: float  # share of the window spent in the batch stages (NaN for the relay)

    def kept_up(self) -> bool:
        """Whether latency stayed level over the window (see the module's docstring)."""
        fifth = len(self.latencies_ms) // 5
        if fifth < 10:
            return True
        first, last = np.median(self.latencies_ms[:fifth]), np.median(self.latencies_ms[-fifth:])
        return bool(last - first <= KEPT_UP_GROWTH_MS)


class Consumer:
    """A subprocess that reads the input topic and writes predictions, with a metrics endpoint."""

    def __init__(self, command: list[str], port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("STREAM_LSTM_")},
        )

    @classmethod
    def service(
        cls, bootstrap: str, topic: str, batch_size: int, fetch_wait_ms: int, workdir: Path
    ) -> Consumer:
        """``stream-lstm run`` with bench_service.py's settings (fast group join, quiet log)."""
        port = free_port()
        command = [
            sys.executable, "-m", "stream_lstm", "run", "--bootstrap-servers", bootstrap,
            "--fetch-max-wait-ms", str(fetch_wait_ms),
            "--input-topic", topic, "--output-topic", topic + "-out", "--dead-letter-topic", topic + "-dead",
            "--group-id", topic, "--checkpoint-dir", str(workdir / topic), "--batch-size", str(batch_size),
            "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
            "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "1000", "--log-level", "WARNING",
        ]  # fmt: skip
        return cls(command, port, workdir / f"{topic}.log")

    @classmethod
    def relay(
        cls, bootstrap: str, topic: str, batch_size: int, fetch_wait_ms: int, workdir: Path
    ) -> Consumer:
        """This script's pass-through relay (see :func:`run_relay`)."""
        port = free_port()
        command = [sys.executable, __file__, "--relay", bootstrap, topic, str(batch_size), str(fetch_wait_ms),
                   str(port)]  # fmt: skip
        return cls(command, port, workdir / f"{topic}.log")

    def check(self) -> None:
        if self.process.poll() is not None:
            raise SystemExit(
                f"{self.log_path.stem} exited with status {self.process.returncode}; see its log"
            )

    def metrics(self) -> dict[str, float]:
        """The metrics endpoint's samples by name with labels (none while it does not answer)."""
        samples: dict[str, float] = {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as response:
                for line in response.read().decode().splitlines():
                    if line and not line.startswith("#"):
                        name, _, value = line.rpartition(" ")
                        samples[name] = float(value)
        except OSError:
            pass
        return samples

    def processed(self) -> int:
        return int(self.metrics().get(PROCESSED, 0))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def run_relay(bootstrap: str, topic: str, batch_size: int, fetch_wait_ms: int, port: int) -> None:
    """Consume ``topic`` and write a prediction-shaped record per event to ``topic-out``, until SIGTERM.

    The client settings are the service's where they matter to latency (kafka-python's defaults
    for fetching but ``fetch_max_wait_ms``, ``max_records`` per poll, 0.2 s poll timeout;
    ``acks=all``, ``linger_ms=5``); the partition is assigned rather than joined through a group,
    and nothing is learned or checkpointed.
    """
    from prometheus_client import Counter, start_http_server

    from stream_lstm.messages.decoding import decode_event

    events = Counter("stream_lstm_events", "Events relayed.", ["outcome"])
    start_http_server(port, addr="127.0.0.1")
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=fetch_wait_ms
    )
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    step = 0
    while not stopping:
        for records in consumer.poll(timeout_ms=200, max_records=batch_size).values():
            for record in records:
                event = decode_event(record.value, record.key)
                value = {
                    "key": event.key, "ts": event.ts, "label": event.label,
                    "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
                    "predictions": {"lstm": 0.5, "logreg": 0.5, "no_change": 0.5}, "model_step": step,
                }  # fmt: skip
                producer.send(topic + "-out", key=event.key.encode(), value=json.dumps(value).encode())
            events.labels(outcome="processed").inc(len(records))
            step += 1
    producer.close()
    consumer.close()


def read_topic(bootstrap: str, topic: str, expected: int) -> list[Any]:
    """The records of partition 0 of ``topic`` from its start: ``expected`` of them, or all there are.

    Stops at ``expected`` records or at the high watermark of a fetch, not at ``end_offsets``:
    Tansu answers ListOffsets with the last record batch's base offset + 1, which is short of the
    end when that batch holds several records.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=5000)
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    records: list[Any] = []
    deadline = time.monotonic() + 60
    while len(records) < expected and time.monotonic() < deadline:
        polled = consumer.poll(timeout_ms=500)
        for batch in polled.values():
            records.extend(batch)
        highwater = consumer.highwater(partition)
        if not polled and highwater is not None and consumer.position(partition) >= highwater:
            break
    consumer.close()
    return records


def stage_means(before: dict[str, float], after: dict[str, float]) -> tuple[dict[str, float], float]:
    """Mean milliseconds per batch in each stage between two scrapes, and their total seconds."""
    means, busy = {}, 0.0
    for stage in STAGES:
        count_name = f'stream_lstm_batch_stage_seconds_count{{stage="{stage}"}}'
        sum_name = f'stream_lstm_batch_stage_seconds_sum{{stage="{stage}"}}'
        count = after.get(count_name, 0.0) - before.get(count_name, 0.0)
        seconds = after.get(sum_name, 0.0) - before.get(sum_name, 0.0)
        means[stage] = 1000 * seconds / count if count else float("nan")
        busy += seconds
    return means, busy


def measure(
    broker: EmbeddedBroker,
    args: argparse.Namespace,
    run: str,
    batch_size: int,
    fetch_wait_ms: int,
    work: Path,
) -> Result:
    """One run of the service (or the relay) at ``batch_size`` and ``fetch_wait_ms``."""
    bootstrap = broker.bootstrap_servers
    topic = f"latency-{run}-b{batch_size}-w{fetch_wait_ms}"
    broker.create_topics([topic, topic + "-out", topic + "-dead"])
    total = PRIMING_EVENTS + int(args.rate * (args.warmup + args.seconds))
    payloads = [
        (event.key.encode(), encode_event(event))
        for event in temporal_stream(total, n_keys=args.keys, seed=5)
    ]
    # No lingering: each event leaves when it is due, so its CreateTime is its send time.
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
    consumer = (Consumer.relay if run == "relay" else Consumer.service)(
        bootstrap, topic, batch_size, fetch_wait_ms, work
    )
    acked_ms: dict[int, float] = {}  # input offset -> when the broker's acknowledgement came

    def record_ack(metadata: Any) -> None:
        acked_ms[metadata.offset] = time.time() * 1000

    try:
        for key, value in payloads[:PRIMING_EVENTS]:
            producer.send(topic, key=key, value=value)
        producer.flush()
        deadline = time.monotonic() + 120
        while consumer.processed() < PRIMING_EVENTS:  # it has joined its group and is predicting
            consumer.check()
            if time.monotonic() > deadline:
                raise SystemExit(f"no predictions after 120 s; see {consumer.log_path}")
            time.sleep(0.1)

        # The steady phase: event i is due at start + i / rate.
        start = time.time()
        window_start = start + args.warmup
        before: dict[str, float] = {}
        scraped = window_start
        for i, (key, value) in enumerate(payloads[PRIMING_EVENTS:]):
            due = start + i / args.rate
            if not before and due >= window_start:
                before, scraped = consumer.metrics(), time.time()
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            producer.send(topic, key=key, value=value).add_callback(record_ack)
        producer.flush()
        catch_up = max(60.0, 2 * args.seconds)
        deadline = time.monotonic() + catch_up
        while consumer.processed() < total and time.monotonic() < deadline:
            consumer.check()
            time.sleep(0.05)
        after, window_end = consumer.metrics(), time.time()  # busy: share of scraped .. window_end
        if int(after.get(PROCESSED, 0)) < total:
            print(f"  {topic}: {total - int(after.get(PROCESSED, 0)):,} events still not predicted "
                  f"{catch_up:.0f} s after the last was sent; they are left out", flush=True)  # fmt: skip
    finally:
        consumer.stop()
        producer.close()

    window_ms = window_start * 1000
    sent_ms = {
        record.offset: record.timestamp
        for record in read_topic(bootstrap, topic, total)
        if record.offset >= PRIMING_EVENTS and record.timestamp >= window_ms
    }
    latencies: dict[int, int] = {}
    batch_sizes: dict[int, int] = {}
    for record in read_topic(bootstrap, topic + "-out", total):
        value = json.loads(record.value)
        offset = value["source"]["offset"]
        if offset in sent_ms and offset not in latencies:  # the first prediction, were there two
            latencies[offset] = record.timestamp - sent_ms[offset]
            batch_sizes[value["model_step"]] = batch_sizes.get(value["model_step"], 0) + 1
    measured = sorted(sent_ms.values())
    rate = (len(measured) - 1) / ((measured[-1] - measured[0]) / 1000) if len(measured) > 1 else 0.0
    means, busy_seconds = stage_means(before, after)
    in_order = sorted(latencies)
    return Result(
        run=run,
        batch_size=batch_size,
        fetch_wait_ms=fetch_wait_ms,
        sent=len(sent_ms),
        rate=rate,
        latencies_ms=np.array([latencies[offset] for offset in in_order], dtype=float),
        ack_ms=np.array([acked_ms[o] - sent_ms[o] for o in in_order if o in acked_ms], dtype=float),
        batches=len(batch_sizes),
        max_batch=max(batch_sizes.values(), default=0),
        stage_ms=means,
        busy=float("nan") if run == "relay" else busy_seconds / max(window_end - scraped, 1e-9),
    )


HEADERS = ["run", "batch size", "fetch wait ms", "events", "events/s", "mean batch", "p50 ms", "p90 ms",
           "p99 ms", "max ms", "input ack p50/p99", "predict ms/batch", "learn ms/batch", "busy",
           "kept up"]  # fmt: skip


def row(result: Result) -> list[str]:
    lat = result.latencies_ms
    missing = result.sent - len(lat)
    if len(lat):
        p50, p90, p99, top = (*np.percentile(lat, [50, 90, 99]), lat.max())
    else:
        p50 = p90 = p99 = top = float("nan")
    ack = result.ack_ms
    service = result.run == "service"
    return [
        result.run,
        str(result.batch_size),
        str(result.fetch_wait_ms),
        f"{len(lat):,}" + (f" ({missing:,} missing)" if missing else ""),
        f"{result.rate:,.0f}",
        f"{len(lat) / result.batches if result.batches else float('nan'):,.1f} (max {result.max_batch:,})",
        f"{p50:,.0f}",
        f"{p90:,.0f}",
        f"{p99:,.0f}",
        f"{top:,.0f}",
        "/".join(f"{v:,.0f}" for v in np.percentile(ack, [50, 99])) if len(ack) else "-",
        f"{result.stage_ms['predict']:.2f}" if service else "-",
        f"{result.stage_ms['learn']:.2f}" if service else "-",
        f"{100 * result.busy:.0f}%" if service else "-",
        "yes" if result.kept_up() else "no",
    ]


def main() -> None:
    if len(sys.argv) == 7 and sys.argv[1] == "--relay":  # the relay's own process
        run_relay(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,16,64,256", help="comma-separated --batch-size values")
    parser.add_argument("--rate", type=float, default=500.0, help="input events per second (default: 500)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per run (default: 15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="steady seconds not measured (default: 3)")
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys in the stream (default: 1000)")
    parser.add_argument(
        "--fetch-waits",
        default=f"{DEFAULT_FETCH_WAIT_MS},10",
        help=f"comma-separated --fetch-max-wait-ms of the consumers; {DEFAULT_FETCH_WAIT_MS} is the default",
    )
    parser.add_argument("--no-relay", action="store_true", help="skip the pass-through relay's rows")
    parser.add_argument("--markdown", metavar="OUT.md", help="append the table to this Markdown file")
    args = parser.parse_args()
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    waits = [int(wait) for wait in args.fetch_waits.split(",")]
    runs = [("service", size, wait) for wait in waits for size in sizes]
    if not args.no_relay:
        runs += [("relay", RELAY_BATCH, wait) for wait in waits]
    machine = f"Machine: {describe_machine()}; client: kafka-python; broker: embedded (Tansu)"
    print(machine, flush=True)
    results = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as work, EmbeddedBroker() as broker:
        for run, size, wait in runs:
            results.append(measure(broker, args, run, size, wait, Path(work)))
            cells = row(results[-1])
            print(f"  {run}, batch size {size}, fetch wait {wait} ms: p50 {cells[6]} ms, p99 {cells[8]} ms "
                  f"({time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip
    title = (
        f"Latency from input CreateTime to prediction CreateTime at {args.rate:,.0f} events/s "
        f"({args.keys:,} keys, one partition; {args.seconds:g} s measured after {args.warmup:g} s of "
        f"warm-up). A batch is what one poll returns, up to the batch size. Fetch wait: the consumers' "
        f"fetch_max_wait_ms ({DEFAULT_FETCH_WAIT_MS}: the service as shipped). Relay: no models."
    )
    table = f"{title}\n\n{render_table(HEADERS, [row(r) for r in results])}"
    print(f"\n{table}\n\n({time.monotonic() - started:.0f} s in all)")
    if args.markdown:
        append_results(args.markdown, "latency benchmark", machine, [table])


if __name__ == "__main__":
    main()
