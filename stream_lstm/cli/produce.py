"""``stream-lstm produce``: replay a CSV file (or the generated stream) into a Kafka topic."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from stream_lstm.cli.arguments import SubParsers, add_config_argument, add_stream_arguments
from stream_lstm.config.declared import PRODUCE_SETTINGS
from stream_lstm.config.setting import add_settings, argument_type, positive_int

if TYPE_CHECKING:
    from stream_lstm.messages.events import Event


def add_command(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``produce`` with its arguments and settings."""
    produce = commands.add_parser(
        "produce",
        help="replay a CSV file (or the generated stream) into a Kafka topic as JSON events",
        description=(
            "Replay events in file order as JSON messages, with the event key as the Kafka message "
            "key so that each key's order is kept."
        ),
    )
    produce.add_argument("file", metavar="FILE.csv", nargs="?", help="the CSV file (omit with --synthetic)")
    produce.add_argument("--synthetic", action="store_true", help="replay the project's generated stream")
    add_stream_arguments(produce, events=50_000, note="--synthetic: ")
    produce.add_argument("--limit", type=argument_type(positive_int), metavar="N", help="stop after N events")
    produce.add_argument("--repeat", action="store_true", help="start again at the end, forever")
    add_config_argument(produce)
    add_settings(produce, PRODUCE_SETTINGS)
    produce.set_defaults(handler=produce_command, settings=PRODUCE_SETTINGS)


def events_to_produce(args: argparse.Namespace, settings: dict[str, Any]) -> Iterator[Event]:
    """The events of the file (bad rows reported and skipped) or the generated stream, in order."""
    from itertools import islice

    def one_pass() -> Iterator[Event]:
        if args.synthetic:
            from stream_lstm.offline.generator import temporal_stream

            return temporal_stream(args.events, n_keys=args.keys, seed=args.seed)
        from stream_lstm.offline.csv_source import CsvEventSource

        def report(bad: Any) -> None:
            print(f"{args.file}:{bad.line}: skipped: {bad.reason}", file=sys.stderr)

        from stream_lstm.config.declared import csv_columns

        return iter(CsvEventSource(args.file, **csv_columns(settings), on_bad_row=report))

    def stream() -> Iterator[Event]:
        while True:
            yield from one_pass()
            if not args.repeat:
                return

    return islice(stream(), args.limit) if args.limit else stream()


def produce_command(
    args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser
) -> int:
    """Write the events to the topic, paced to ``--rate`` when given, until done or Ctrl-C."""
    import time

    from stream_lstm.kafka.connect import EventWriter
    from stream_lstm.messages.events import encode_event
    from stream_lstm.telemetry.progress import ProgressLine

    if args.synthetic == bool(args.file):
        parser.error("give either FILE.csv or --synthetic")
    if args.file and not settings["label"]:
        parser.error("produce FILE.csv needs the label column: --label COL (or STREAM_LSTM_LABEL)")

    from stream_lstm.cli.kafka_reachable import require_kafka
    from stream_lstm.kafka.security import security_from_settings
    from stream_lstm.telemetry.redaction import configure_logging

    configure_logging()
    events = events_to_produce(args, settings)
    security = security_from_settings(settings)
    require_kafka(settings["bootstrap_servers"], security)
    writer = EventWriter(
        settings["bootstrap_servers"], settings["topic"], client=settings["kafka_client"], security=security
    )
    rate = settings["rate"]
    progress = ProgressLine(args.limit)
    started = time.monotonic()
    sent = 0
    try:
        for event in events:
            if rate:
                delay = started + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing to the requested rate, not waiting on a condition
            writer.send(event.key, encode_event(event))
            sent += 1
            progress.update(sent)
    except KeyboardInterrupt:
        pass
    finally:
        writer.close()
        progress.update(sent, force=True)
        progress.close()
    print(f"produced {sent:,} events to {settings['topic']}")
    return 0
