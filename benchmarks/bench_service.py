"""The service against the I/O floor: raw consume+decode, a pass-through relay, and stream-lstm.

On Apache Kafka (a single-node KRaft broker from Maven Central, see stream_lstm.testing.apache_kafka)
and on the embedded Tansu broker, one after the other in one run, and one topic per key count: the
rate of consuming and
decoding the events (raw), of a relay written with the same client that consumes, decodes,
encodes a prediction-sized record and produces it (the I/O floor of any such service), and of
the full service (three models, learning, checkpoints) as a `stream-lstm run` process, timed from
its first prediction to its last by the records' timestamps (its metrics are read only twice a
second: each scrape costs the service CPU); all of it once per Kafka client library (kafka-python, and
confluent-kafka when installed). Usage: ``python benchmarks/bench_service.py [--events N]
[--keys 1,1000,100000] [--clients kafka-python,confluent] [--learner-process true,false]
[--brokers apache-kafka,tansu] [--markdown FILE]``; each service run is reported with the LSTM in
its own process (true, the default on 2+ CPUs) and in the service's process (false).
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

from stream_lstm.evaluation.report import render_table
from stream_lstm.kafka.broker import EmbeddedBroker, free_port
from stream_lstm.kafka.connect import EventWriter
from stream_lstm.messages.decoding import decode_event
from stream_lstm.messages.events import encode_event
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.testing.apache_kafka import ApacheKafkaBroker


def consume_all(client: str, bootstrap: str, topic: str, total: int, handle=None) -> float:
    """Read ``total`` records from the start of ``topic``; return the seconds it took."""
    if client == "confluent":
        return _consume_all_confluent(bootstrap, topic, total, handle)
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
                    handle(record.topic, record.partition, record.offset, event)
            seen += len(records)
    if handle is not None:
        handle(None, None, None, None)
    seconds = time.perf_counter() - started
    consumer.close()
    return seconds


def _consume_all_confluent(bootstrap: str, topic: str, total: int, handle=None) -> float:
    from confluent_kafka import OFFSET_BEGINNING, Consumer
    from confluent_kafka import TopicPartition as ConfluentPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{time.monotonic_ns()}",
            "enable.auto.commit": False,
        }
    )
    consumer.list_topics(topic, timeout=10)  # connect and fetch metadata before the clock
    consumer.assign([ConfluentPartition(topic, 0, OFFSET_BEGINNING)])
    seen = 0
    started = time.perf_counter()
    while seen < total:
        for record in consumer.consume(num_messages=2000, timeout=1.0):
            if record.error() is not None:
                continue
            event = decode_event(record.value(), record.key())
            if handle is not None:
                handle(record.topic(), record.partition(), record.offset(), event)
            seen += 1
    if handle is not None:
        handle(None, None, None, None)
    seconds = time.perf_counter() - started
    consumer.close()
    return seconds


def relay(client: str, bootstrap: str, topic: str, total: int) -> float:
    """Consume, decode, encode a prediction-sized record and produce it, with the same client."""
    if client == "confluent":
        from confluent_kafka import Producer

        confluent = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})

        def send(key: bytes, value: bytes) -> None:
            while True:
                try:
                    confluent.produce(topic + "-relay", key=key, value=value)
                    return
                except BufferError:
                    confluent.poll(0.05)

        def finish() -> None:
            confluent.flush(60)
    else:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)

        def send(key: bytes, value: bytes) -> None:
            producer.send(topic + "-relay", key=key, value=value)

        def finish() -> None:
            producer.flush()
            producer.close()

    def forward(source_topic, partition, offset, event) -> None:
        if event is None:
            finish()
            return
        value = {
            "key": event.key, "ts": event.ts, "label": event.label,
            "source": {"topic": source_topic, "partition": partition, "offset": offset},
            "predictions": {"lstm": 0.5, "logreg": 0.5, "no_change": 0.5}, "model_step": 0,
        }  # fmt: skip
        send(event.key.encode(), json.dumps(value).encode())

    return consume_all(client, bootstrap, topic, total, forward)


def service(
    client: str, bootstrap: str, topic: str, total: int, workdir: Path, learner_process: str, run: str
) -> float:
    port = free_port()
    log = (workdir / f"service-{run}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "stream_lstm", "run", "--bootstrap-servers", bootstrap, "--input-topic", topic,
         "--output-topic", f"{run}-out", "--dead-letter-topic", topic + "-dead",
         "--group-id", run, "--checkpoint-dir", str(workdir / run),
         "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
         "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "1000", "--log-level", "WARNING",
         "--kafka-client", client, "--learner-process", learner_process],
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
        while processed() < total:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service stopped early; see {log.name}")
            time.sleep(0.5)  # a scrape costs the service CPU: look rarely, time by the records
    finally:
        process.terminate()
        process.wait(timeout=30)
    return produce_span(bootstrap, f"{run}-out", total)


def produce_span(bootstrap: str, topic: str, total: int) -> float:
    """Seconds from the first to the last of the ``total`` records of ``topic``, by their
    timestamps (set by the producing client when it sent each), scaled to ``total`` intervals."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=5000)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    stamps: list[int] = []
    deadline = time.monotonic() + 120
    try:
        while len(stamps) < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(stamps)} of {total} predictions in {topic}")
            for records in consumer.poll(timeout_ms=500).values():
                stamps += [record.timestamp for record in records]
    finally:
        consumer.close()
    stamps = stamps[:total]
    return (max(stamps) - min(stamps)) / 1000 * total / max(total - 1, 1)


def available_clients(requested: str) -> list[str]:
    clients = []
    for name in requested.split(","):
        if name == "confluent":
            try:
                import confluent_kafka  # noqa: F401
            except ImportError:
                print("confluent-kafka is not installed: skipping it (pip install confluent-kafka)")
                continue
        clients.append(name)
    return clients


def open_broker(name: str, workdir: Path) -> EmbeddedBroker | ApacheKafkaBroker:
    """A started broker of the kind ``name`` (apache-kafka or tansu)."""
    if name == "apache-kafka":
        broker: EmbeddedBroker | ApacheKafkaBroker = ApacheKafkaBroker(workdir / "apache-kafka")
    elif name == "tansu":
        broker = EmbeddedBroker()
    else:
        raise SystemExit(f"unknown broker {name!r}: apache-kafka or tansu")
    broker.start()
    return broker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--keys", default="1,1000,100000")
    parser.add_argument("--clients", default="kafka-python,confluent")
    parser.add_argument(
        "--learner-process",
        default="true,false",
        help="the service's --learner-process values to run, comma-separated (true: the LSTM in a "
        "process of its own, the default on 2+ CPUs; false: in the service's process)",
    )
    parser.add_argument("--brokers", default="apache-kafka,tansu", help="brokers to run on, in turn")
    parser.add_argument("--markdown", type=Path, help="append the table to this markdown file")
    args = parser.parse_args()
    machine = f"Machine: {describe_machine()}"
    print(machine, flush=True)
    rows = []
    for broker_name in args.brokers.split(","):
        with tempfile.TemporaryDirectory() as work:
            broker = open_broker(broker_name, Path(work))
            try:
                rows += run_broker(broker_name, broker, Path(work), args)
            finally:
                broker.stop()
    headers = [
        "broker", "client", "keys", "LSTM process", "raw events/s", "relay events/s", "service events/s",
        "service/relay", "service/raw",
    ]  # fmt: skip
    title = f"{args.events:,} events per key count, one partition"
    table = render_table(headers, rows)
    print(f"\n{title}\n\n{table}")
    if args.markdown:
        with args.markdown.open("a") as out:
            out.write(f"\n# service benchmark\n\n{machine}\n\n```\n{title}\n\n{table}\n```\n")


def run_broker(
    broker_name: str, broker: EmbeddedBroker | ApacheKafkaBroker, workdir: Path, args: argparse.Namespace
) -> list[list[str]]:
    """The table's rows of one broker: every key count, client and LSTM placement."""
    rows = []
    for keys in (int(k) for k in args.keys.split(",")):
        topic = f"bench-{keys}"
        placements = args.learner_process.split(",")
        outputs = [
            f"{topic}-{client}-{i}-out"
            for client in available_clients(args.clients)
            for i in range(len(placements))
        ]
        broker.create_topics([topic, topic + "-relay", topic + "-dead", *outputs])
        writer = EventWriter(broker.bootstrap_servers, topic)
        for event in temporal_stream(args.events, n_keys=keys, seed=1):
            writer.send(event.key, encode_event(event))
        writer.close()
        for client in available_clients(args.clients):
            bootstrap = broker.bootstrap_servers
            raw = args.events / consume_all(client, bootstrap, topic, args.events)
            relayed = args.events / relay(client, bootstrap, topic, args.events)
            for i, placement in enumerate(placements):
                run = f"{topic}-{client}-{i}"
                full = args.events / service(client, bootstrap, topic, args.events, workdir, placement, run)
                rows.append([broker_name, client, f"{keys:,}", placement, f"{raw:,.0f}", f"{relayed:,.0f}",
                             f"{full:,.0f}", f"{full / relayed:.2f}", f"{full / raw:.2f}"])  # fmt: skip
            print(f"  {broker_name}, {client}, {keys:,} keys done", flush=True)
    return rows


if __name__ == "__main__":
    main()
