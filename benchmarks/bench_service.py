"""The service against the I/O floor: raw consume+decode, a pass-through relay, and stream-lstm.

On the embedded broker and one topic per key count, in one run: the rate of consuming and
decoding the events (raw), of a relay written with the same client that consumes, decodes,
encodes a prediction-sized record and produces it (the I/O floor of any such service), and of
the full service (three models, learning, checkpoints) as a `stream-lstm run` process, timed from
its first processed event to its last. Usage: ``python benchmarks/bench_service.py [--events N]
[--keys 1,1000,100000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from machine import describe_machine

from stream_lstm.broker import EmbeddedBroker, free_port
from stream_lstm.events import decode_event, encode_event
from stream_lstm.generator import temporal_stream
from stream_lstm.kafka_io import EventWriter
from stream_lstm.report import render_table


def consume_all(bootstrap: str, topic: str, total: int, handle=None) -> float:
    """Read ``total`` records from the start of ``topic``; return the seconds it took."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=2000)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    consumer.poll(timeout_ms=100, max_records=1)  # connect and fetch metadata before the clock
    consumer.seek_to_beginning()
    seen = 0
    started = time.perf_counter()
    while seen < total:
        for records in consumer.poll(timeout_ms=1000).values():
            for record in records:
                event = decode_event(record.value, record.key)
                if handle is not None:
                    handle(record, event)
            seen += sum(1 for _ in records)
    if handle is not None:
        handle(None, None)
    seconds = time.perf_counter() - started
    consumer.close()
    return seconds


def relay(bootstrap: str, topic: str, total: int) -> float:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)

    def forward(record, event) -> None:
        if record is None:
            producer.flush()
            return
        value = {
            "key": event.key, "ts": event.ts, "label": event.label,
            "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
            "predictions": {"lstm": 0.5, "logreg": 0.5, "no_change": 0.5}, "model_step": 0,
        }  # fmt: skip
        producer.send(topic + "-relay", key=event.key.encode(), value=json.dumps(value).encode())

    seconds = consume_all(bootstrap, topic, total, forward)
    producer.close()
    return seconds


def service(bootstrap: str, topic: str, total: int, workdir: Path) -> float:
    port = free_port()
    log = (workdir / f"service-{topic}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "stream_lstm", "run", "--bootstrap-servers", bootstrap, "--input-topic", topic,
         "--output-topic", topic + "-out", "--dead-letter-topic", topic + "-dead", "--group-id", topic,
         "--checkpoint-dir", str(workdir / topic), "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
         "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "1000", "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("STREAM_LSTM_")},
    )  # fmt: skip

    def processed() -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith('stream_lstm_events_total{outcome="processed"}'):
                        return float(line.split()[-1])
        except OSError:
            pass
        return 0.0

    try:
        deadline = time.monotonic() + 600
        while processed() == 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service did not start; see {log.name}")
            time.sleep(0.01)
        started = time.perf_counter()
        first = processed()
        while processed() < total:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service stopped early; see {log.name}")
            time.sleep(0.02)
        # Rate over the events seen after the clock started (the first poll's are excluded).
        return (time.perf_counter() - started) * total / max(total - first, 1)
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--keys", default="1,1000,100000")
    args = parser.parse_args()
    print(f"Machine: {describe_machine()}; client: kafka-python; broker: embedded (Tansu)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as work, EmbeddedBroker() as broker:
        workdir = Path(work)
        for keys in (int(k) for k in args.keys.split(",")):
            topic = f"bench-{keys}"
            broker.create_topics([topic, topic + "-relay", topic + "-out", topic + "-dead"])
            writer = EventWriter(broker.bootstrap_servers, topic)
            for event in temporal_stream(args.events, n_keys=keys, seed=1):
                writer.send(event.key, encode_event(event))
            writer.close()
            raw = args.events / consume_all(broker.bootstrap_servers, topic, args.events)
            relayed = args.events / relay(broker.bootstrap_servers, topic, args.events)
            full = args.events / service(broker.bootstrap_servers, topic, args.events, workdir)
            rows.append([f"{keys:,}", f"{raw:,.0f}", f"{relayed:,.0f}", f"{full:,.0f}",
                         f"{full / relayed:.2f}", f"{full / raw:.2f}"])  # fmt: skip
            print(f"  {keys:,} keys done", flush=True)
    headers = ["keys", "raw events/s", "relay events/s", "service events/s", "service/relay", "service/raw"]
    print(f"\n{args.events:,} events per key count, one partition\n\n{render_table(headers, rows)}")


if __name__ == "__main__":
    main()
