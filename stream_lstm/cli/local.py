"""The commands that need no Kafka of yours: ``broker``, ``demo`` and ``generate``.

``broker`` runs the embedded broker in the foreground, ``demo`` runs everything on this machine
(:mod:`stream_lstm.cli.demo`), ``generate`` writes the generated stream as CSV. Their few
arguments are flags only, except ``demo``'s way to an existing cluster
(:data:`~stream_lstm.config.declared.DEMO_SETTINGS`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from stream_lstm.cli.arguments import SubParsers, add_config_argument, add_stream_arguments
from stream_lstm.config.declared import DEMO_SETTINGS
from stream_lstm.config.setting import (
    add_settings,
    argument_type,
    port,
    port_or_any,
    positive_float,
    positive_int,
)


def add_broker_command(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``broker``: the embedded broker until SIGINT or SIGTERM."""
    broker = commands.add_parser(
        "broker",
        help="run the embedded Kafka-protocol broker (memory only) in the foreground",
        description="Run the embedded broker (Tansu) on 127.0.0.1 until SIGINT or SIGTERM (data in memory).",
    )
    broker.add_argument(
        "--port",
        type=argument_type(port_or_any),
        default=9092,
        help="port to listen on, 0: any free port (default: 9092)",
    )
    broker.add_argument(
        "--topics",
        default="",
        help="comma-separated topics to create once it is up (e.g. events,predictions)",
    )
    broker.add_argument(
        "--partitions",
        type=argument_type(positive_int),
        default=1,
        help="partitions of --topics (default: 1)",
    )
    broker.set_defaults(handler=broker_command, settings=())


def add_demo_command(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``demo``: broker, service and a generated stream, with live progress."""
    demo = commands.add_parser(
        "demo",
        help="broker, service and a generated stream on this machine, with live progress",
        description=(
            "Start the embedded broker, create the topics, run the service, replay a generated "
            "multi-key stream, show live events/s and rolling accuracy of every model, then print "
            "the final comparison and stop everything (also on Ctrl-C). With --bootstrap-servers, "
            "run on that cluster instead (TLS and SASL as for run: docs/connect.md)."
        ),
    )
    add_stream_arguments(demo, events=40_000, seed=False)
    demo.add_argument(
        "--rate", type=argument_type(positive_float), default=2_500, help="events per second (default: 2500)"
    )
    demo.add_argument("--workdir", default="demo-output", help="logs and checkpoints (default: demo-output)")
    demo.add_argument(
        "--metrics-port", type=argument_type(port), default=9100, help="service metrics port (default: 9100)"
    )
    add_config_argument(demo)
    add_settings(demo, DEMO_SETTINGS)
    demo.set_defaults(handler=demo_command, settings=DEMO_SETTINGS)


def add_generate_command(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``generate``: the generated multi-key stream as CSV."""
    generate = commands.add_parser(
        "generate",
        help="write a generated multi-key temporal stream as CSV (for demos and tests)",
        description=(
            "Write a stream of interleaved keys whose labels depend on each key's earlier events "
            "(columns key, ts, label, a, b, c): the current features alone predict nothing."
        ),
    )
    generate.add_argument("out", metavar="OUT.csv", help="where to write the CSV")
    add_stream_arguments(generate, events=50_000)
    generate.set_defaults(handler=generate_command, settings=())


def broker_command(
    args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser
) -> int:
    """Run the embedded broker, with ``--topics`` created, until a signal or its process ends."""
    import signal
    import threading

    from stream_lstm.kafka.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port or None)
    broker.start()
    topics = [t.strip() for t in args.topics.split(",") if t.strip()]
    if topics:
        broker.create_topics(topics, partitions=args.partitions)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stopped.set())
    print(f"broker ready on {broker.bootstrap_servers}", flush=True)
    try:
        while not stopped.wait(0.5):
            if not broker.running:
                print("stream-lstm: the broker process exited", file=sys.stderr)
                return 1
    finally:
        broker.stop()
    print("broker stopped", flush=True)
    return 0


def demo_command(args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser) -> int:
    """Run the demo (imported here: it loads the broker, Kafka and the models)."""
    from pathlib import Path

    from stream_lstm.cli.demo import Cluster, run_demo
    from stream_lstm.telemetry.redaction import configure_logging

    configure_logging()

    cluster = Cluster.from_settings(settings) if settings["bootstrap_servers"] else None
    if cluster is not None:
        from stream_lstm.cli.kafka_reachable import require_kafka

        require_kafka(cluster.bootstrap_servers, cluster.security)
    return run_demo(
        events=args.events,
        keys=args.keys,
        rate=args.rate,
        workdir=Path(args.workdir),
        metrics_port=args.metrics_port,
        cluster=cluster,
    )


def generate_command(
    args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser
) -> int:
    """Write the generated stream to ``args.out``."""
    from stream_lstm.offline.generator import temporal_stream, write_csv

    count = write_csv(temporal_stream(args.events, n_keys=args.keys, seed=args.seed), args.out)
    print(f"wrote {count:,} events of {args.keys:,} keys to {args.out}")
    return 0
