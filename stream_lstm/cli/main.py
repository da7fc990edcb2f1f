"""The ``stream-lstm`` command line."""

from __future__ import annotations

import argparse
import os
import select
import sys
from collections.abc import Sequence
from typing import Any

from stream_lstm import __version__
from stream_lstm.config.setting import (
    LEARNER_SETTINGS,
    LSTM_HYPERPARAMETERS,
    Setting,
    add_settings,
    non_negative_int,
    parse_auto_bool,
    parse_bool,
    positive_float,
    positive_int,
    resolve_settings,
)
from stream_lstm.errors import ConfigError, StreamLSTMError

#: ``evaluate --parallel auto`` uses a second process from this many events on (see
#: _use_second_process).
PARALLEL_MIN_EVENTS = 25_000

RUNTIME_SETTINGS: tuple[Setting, ...] = (
    Setting("torch_threads", positive_int, 1, "CPU threads torch may use for the LSTM"),
)


def kafka_client(value: str) -> str:
    """A ``--kafka-client`` value whose library is installed."""
    from stream_lstm.kafka.connect import check_kafka_client

    try:
        return check_kafka_client(value)
    except ConfigError as error:  # argparse turns ValueError into a usage message
        raise ValueError(str(error)) from None


def max_abs_value(text: str) -> float:
    """A magnitude limit: above 0 and at most the 1e18 the learner is built for."""
    from stream_lstm.messages.events import MAX_ABS_VALUE

    value = float(text)
    if not 0 < value <= MAX_ABS_VALUE:
        raise ValueError(f"must be above 0 and at most {MAX_ABS_VALUE:g}, got {text}")
    return value


KAFKA_SETTINGS: tuple[Setting, ...] = (
    Setting("bootstrap_servers", str, "127.0.0.1:9092", "Kafka bootstrap servers, HOST:PORT[,HOST:PORT]"),
    Setting(
        "kafka_client",
        kafka_client,
        "kafka-python",
        "Kafka client library: kafka-python (pure Python) or confluent (librdkafka, faster; "
        "pip install 'stream-lstm[confluent]')",
    ),
)

RUN_SETTINGS: tuple[Setting, ...] = (
    *KAFKA_SETTINGS,
    Setting("input_topic", str, "events", "topic of the input events"),
    Setting("output_topic", str, "predictions", "topic the predictions are written to"),
    Setting("dead_letter_topic", str, "dead-letters", "topic malformed messages are written to"),
    Setting("group_id", str, "stream-lstm", "Kafka consumer group of the service"),
    Setting(
        "checkpoint_dir",
        str,
        "checkpoints",
        "checkpoint store: per-partition offsets and key states, per-instance weights "
        "(share it between the instances of a group)",
    ),
    Setting(
        "checkpoint_topic",
        str,
        None,
        "keep the checkpoint store in this compacted Kafka topic instead of --checkpoint-dir, so "
        "the instances of a group share no disk (created when missing)",
        metavar="TOPIC",
    ),
    Setting(
        "instance_id",
        str,
        None,
        "this instance's name in the checkpoint store (default: the host name); "
        "unique among running instances",
    ),
    Setting("checkpoint_every", positive_int, 10_000, "checkpoint after this many messages"),
    Setting("checkpoint_interval", positive_float, 5.0, "checkpoint at least this often, in seconds"),
    Setting("metrics_port", non_negative_int, 9100, "port of /metrics and /healthz (0: any free port)"),
    Setting("metrics_host", str, "0.0.0.0", "address /metrics and /healthz listen on"),
    Setting("exactly_once", parse_bool, False, "write predictions and offsets in Kafka transactions"),
    Setting(
        "transactional_id",
        str,
        None,
        "--exactly-once: transactional id (default: stream-lstm-GROUP-INSTANCE_ID)",
    ),
    Setting("max_message_bytes", positive_int, 1_000_000, "larger messages go to the dead-letter topic"),
    Setting(
        "max_key_bytes",
        positive_int,
        1024,
        "longest entity key in UTF-8 bytes (the key field, else the message key); longer: dead letter",
    ),
    Setting("max_name_bytes", positive_int, 256, "longest feature name in UTF-8 bytes; longer: dead letter"),
    Setting("max_message_features", positive_int, 256, "most features in one message; more: dead letter"),
    Setting(
        "max_abs_value",
        max_abs_value,
        1e18,
        "largest magnitude of a feature value or ts (at most 1e18); larger: dead letter",
    ),
    Setting("session_timeout_ms", positive_int, 10_000, "consumer group session timeout"),
    Setting("heartbeat_interval_ms", positive_int, 2_000, "consumer group heartbeat interval"),
    Setting(
        "max_poll_interval_ms", positive_int, 300_000, "longest time between polls before leaving the group"
    ),
    Setting(
        "fetch_max_wait_ms",
        positive_int,
        100,
        "longest time the broker may hold a fetch that finds nothing new (bounds latency on brokers "
        "that wait it out, like the embedded one)",
    ),
    Setting("log_level", str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    *LEARNER_SETTINGS,
    Setting("torch_threads", positive_int, 1, "CPU threads torch may use for the LSTM"),
    Setting(
        "learner_process",
        parse_auto_bool,
        "auto",
        "run the LSTM in a process of its own, so that it learns on another CPU while this one "
        "does the Kafka I/O and the baselines (same predictions); auto: when this process may "
        "use 2+ CPUs",
        metavar="auto|true|false",
    ),
)

PRODUCE_SETTINGS: tuple[Setting, ...] = (
    *KAFKA_SETTINGS,
    Setting("topic", str, "events", "topic to write the events to"),
    Setting("label", str, None, "name of the label column (required with a FILE)"),
    Setting("key", str, None, "name of the key column; without it the file is one stream"),
    Setting("ts", str, None, "name of the timestamp column (seconds or ISO-8601)"),
    Setting("rate", positive_float, None, "events per second (default: as fast as possible)"),
)

EVALUATE_SETTINGS: tuple[Setting, ...] = (
    Setting("label", str, None, "name of the label column (required)"),
    Setting("key", str, None, "name of the key column; without it the file is one stream"),
    Setting("ts", str, None, "name of the timestamp column (seconds or ISO-8601)"),
    *LEARNER_SETTINGS,
    *RUNTIME_SETTINGS,
    Setting(
        "parallel",
        parse_auto_bool,
        "auto",
        "run the baselines in a second process beside the LSTM (same scores); auto: when this "
        f"process may use 2+ CPUs and the file has at least {PARALLEL_MIN_EVENTS:,} events",
        metavar="auto|true|false",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="stream-lstm",
        description="Online LSTM predictions for ordered event streams, compared with baselines.",
    )
    parser.add_argument("--version", action="version", version=f"stream-lstm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    evaluate = commands.add_parser(
        "evaluate",
        help="stream a CSV file through the models, test-then-train, and score them",
        description=(
            "Stream a CSV file through the models in file order (prequential: each micro-batch "
            "is predicted before it is learned), print a table of scores, and optionally write "
            "a JSON report and a plot of rolling accuracy. Other columns are numeric features; "
            "an empty cell is a missing feature; bad rows are reported by line and skipped."
        ),
    )
    evaluate.add_argument("file", metavar="FILE.csv", help="the CSV file; its first line names the columns")
    evaluate.add_argument("--json", metavar="OUT.json", help="write the full report here")
    evaluate.add_argument("--plot", metavar="OUT.png", help="write a plot of rolling accuracy here")
    evaluate.add_argument("--limit", type=positive_int, metavar="N", help="stop after N events")
    evaluate.add_argument("--no-progress", action="store_true", help="do not show the progress line")
    evaluate.add_argument("--config", metavar="FILE.toml", help="read settings from this TOML file")
    add_settings(evaluate, EVALUATE_SETTINGS)
    evaluate.set_defaults(handler=_evaluate, settings=EVALUATE_SETTINGS)

    run = commands.add_parser(
        "run",
        help="run the service: consume events from Kafka, predict, learn, checkpoint",
        description=(
            "Consume events from the input topic, write one prediction per event to the output "
            "topic (malformed messages to the dead-letter topic), keep learning, checkpoint the "
            "learner with the offsets, and serve /metrics and /healthz. SIGINT or SIGTERM stops it "
            "after the batch in hand, with a final checkpoint."
        ),
    )
    run.add_argument("--config", metavar="FILE.toml", help="read settings from this TOML file")
    add_settings(run, RUN_SETTINGS)
    run.set_defaults(handler=_run, settings=RUN_SETTINGS)

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
    _add_stream_arguments(produce, events=50_000, note="--synthetic: ")
    produce.add_argument("--limit", type=positive_int, metavar="N", help="stop after N events")
    produce.add_argument("--repeat", action="store_true", help="start again at the end, forever")
    produce.add_argument("--config", metavar="FILE.toml", help="read settings from this TOML file")
    add_settings(produce, PRODUCE_SETTINGS)
    produce.set_defaults(handler=_produce, settings=PRODUCE_SETTINGS)

    broker = commands.add_parser(
        "broker",
        help="run the embedded Kafka-protocol broker (memory only) in the foreground",
        description="Run the embedded broker (Tansu) on 127.0.0.1 until SIGINT or SIGTERM (data in memory).",
    )
    broker.add_argument(
        "--port", type=non_negative_int, default=9092, help="port to listen on (default: 9092)"
    )
    broker.add_argument(
        "--topics",
        default="",
        help="comma-separated topics to create once it is up (e.g. events,predictions)",
    )
    broker.add_argument(
        "--partitions", type=positive_int, default=1, help="partitions of --topics (default: 1)"
    )
    broker.set_defaults(handler=_broker, settings=())

    demo = commands.add_parser(
        "demo",
        help="broker, service and a generated stream on this machine, with live progress",
        description=(
            "Start the embedded broker, create the topics, run the service, replay a generated "
            "multi-key stream, show live events/s and rolling accuracy of every model, then print "
            "the final comparison and stop everything (also on Ctrl-C)."
        ),
    )
    _add_stream_arguments(demo, events=40_000, seed=False)
    demo.add_argument("--rate", type=positive_float, default=2_500, help="events per second (default: 2500)")
    demo.add_argument("--workdir", default="demo-output", help="logs and checkpoints (default: demo-output)")
    demo.add_argument(
        "--metrics-port", type=positive_int, default=9100, help="service metrics port (default: 9100)"
    )
    demo.set_defaults(handler=_demo, settings=())

    generate = commands.add_parser(
        "generate",
        help="write a generated multi-key temporal stream as CSV (for demos and tests)",
        description=(
            "Write a stream of interleaved keys whose labels depend on each key's earlier events "
            "(columns key, ts, label, a, b, c): the current features alone predict nothing."
        ),
    )
    generate.add_argument("out", metavar="OUT.csv", help="where to write the CSV")
    _add_stream_arguments(generate, events=50_000)
    generate.set_defaults(handler=_generate, settings=())
    return parser


def _add_stream_arguments(
    parser: argparse.ArgumentParser, *, events: int, seed: bool = True, note: str = ""
) -> None:
    """--events, --keys and --seed of the generated stream."""
    parser.add_argument(
        "--events", type=positive_int, default=events, help=f"{note}events (default: {events})"
    )
    parser.add_argument("--keys", type=positive_int, default=1000, help=f"{note}keys (default: 1000)")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help=f"{note}seed of the stream (default: 0)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = resolve_settings(args, args.settings)
        status = int(args.handler(args, settings, parser) or 0)
        sys.stdout.flush()  # a closed pipe is met here, not in the interpreter's exit
        return status
    except StreamLSTMError as error:
        print(f"stream-lstm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stream-lstm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_is_closed():
            raise  # a socket or a child process, not our reader: a real error
        # Whoever read stdout has gone (`stream-lstm evaluate ... | head`): stop quietly, as a
        # Unix tool killed by SIGPIPE would, and keep the exit flush from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _stdout_is_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (its write end then polls as an error)."""
    try:
        descriptor = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (a test's capture, a redirect)
        return False
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def lstm_arguments(settings: dict[str, Any]) -> dict[str, Any]:
    """The LSTM's keyword arguments out of the resolved settings."""
    return {name: settings[name] for name in LSTM_HYPERPARAMETERS}


def _use_learner_process(setting: bool | str) -> bool:
    """Whether ``run`` gives the LSTM a process of its own (``--learner-process``).

    ``auto`` does where a second CPU is there to run it: on one CPU the two processes would
    only take turns, and pay for the pipe between them.
    """
    from stream_lstm.learner.cpu_threads import usable_cpus

    if setting == "auto":
        return usable_cpus() > 1
    return bool(setting)


def _use_second_process(parallel: bool | str, events: int) -> bool:
    """Whether ``evaluate`` runs the baselines in a second process (``--parallel``).

    ``auto`` needs a second CPU and a file long enough to repay the second process's start (about
    0.7 s of imports, which the baselines make up at about 25,000 events on 2 cores).
    """
    from stream_lstm.learner.cpu_threads import usable_cpus

    if parallel == "auto":
        return events >= PARALLEL_MIN_EVENTS and usable_cpus() > 1
    return bool(parallel)


def _evaluate(args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser) -> int:
    from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
    from stream_lstm.evaluation.report import format_table, plot_rolling_accuracy, write_json
    from stream_lstm.offline.csv_source import BadRow
    from stream_lstm.offline.evaluate import CsvSpec, SideLane, evaluate_stream, evaluation_report
    from stream_lstm.telemetry.progress import ProgressLine

    if not settings["label"]:
        parser.error("evaluate needs the label column: --label COL (or STREAM_LSTM_LABEL)")
    _check_keys_cover_batch(settings)
    shown_bad_rows = 20

    def report_bad_row(bad: BadRow) -> None:
        if source.skipped <= shown_bad_rows:
            print(f"\r\033[K{args.file}:{bad.line}: skipped: {bad.reason}", file=sys.stderr)
        elif source.skipped == shown_bad_rows + 1:
            print("\r\033[K(further bad rows are counted, not shown)", file=sys.stderr)

    spec = CsvSpec(
        args.file, label=settings["label"], key=settings["key"], ts=settings["ts"], limit=args.limit
    )
    source = spec.reader(on_bad_row=report_bad_row)
    names = settings["models"]
    # The LSTM keeps this process; the baselines, when there are any, may learn beside it.
    side_names = [name for name in names if name != "lstm"]
    total = source.count_rows()
    if args.limit:
        total = min(total, args.limit)
    parallel = "lstm" in names and bool(side_names) and _use_second_process(settings["parallel"], total)
    keep_trace = bool(args.plot)
    if "lstm" in names:
        from stream_lstm.learner.cpu_threads import set_cpu_threads

        set_cpu_threads(settings["torch_threads"])
    models = build_models(
        ["lstm"] if parallel else names, max_keys=settings["max_keys"], lstm=lstm_arguments(settings)
    )
    evaluator = PrequentialEvaluator(
        models, window=settings["window"], max_keys=settings["max_keys"], keep_trace=keep_trace
    )
    progress = ProgressLine(total, enabled=not args.no_progress)
    # Started just before the clock, which then counts all of the second process's work.
    side_lane = None
    if parallel:
        side_lane = SideLane(
            spec,
            side_names,
            batch_size=settings["batch_size"],
            window=settings["window"],
            max_keys=settings["max_keys"],
            keep_trace=keep_trace,
            lstm=lstm_arguments(settings),
        )
    try:
        seconds = evaluate_stream(
            spec.events(source),
            evaluator,
            batch_size=settings["batch_size"],
            progress=progress,
            side_lane=side_lane,
            order=names,
        )
    finally:
        if side_lane is not None:
            side_lane.close()

    learner = models.get("lstm")
    learner_info = None
    if learner is not None:
        learner_info = {**learner.hyperparameters(), "torch_device": str(learner.torch_device)}
    report = evaluation_report(
        source,
        evaluator,
        seconds=seconds,
        batch_size=settings["batch_size"],
        learner=learner_info,
        processes=2 if parallel else 1,
    )
    rate = f"{report['events_per_second']:,.0f}" if report["events_per_second"] else "n/a"
    print(
        f"{report['events']:,} events ({report['labelled']:,} labelled, {report['skipped']:,} bad rows "
        f"skipped) in {seconds:.2f} s: {rate} events/s, batch size {settings['batch_size']}"
        + (", baselines in a second process" if parallel else "")
    )
    print(format_table(report["models"], window=settings["window"]))
    if args.json:
        write_json(args.json, report)
        print(f"report written to {args.json}")
    if args.plot:
        curves = {name: evaluator.rolling_accuracy_curve(name) for name in evaluator.scores}
        plot_rolling_accuracy(
            curves, args.plot, window=settings["window"], title=f"{args.file}: rolling accuracy"
        )
        print(f"plot written to {args.plot}")
    return 0


def _generate(args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser) -> int:
    from stream_lstm.offline.generator import temporal_stream, write_csv

    count = write_csv(temporal_stream(args.events, n_keys=args.keys, seed=args.seed), args.out)
    print(f"wrote {count:,} events of {args.keys:,} keys to {args.out}")
    return 0


def _run(args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser) -> int:
    import logging
    import signal
    from pathlib import Path

    from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
    from stream_lstm.kafka.interface import KafkaSettings
    from stream_lstm.messages.events import InputLimits
    from stream_lstm.service.stream_service import ServiceSettings, StreamService
    from stream_lstm.state.directory_store import check_instance_id, default_instance_id
    from stream_lstm.telemetry.metrics import MetricsServer, Telemetry

    logging.basicConfig(
        level=settings["log_level"].upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if settings["log_level"].upper() != "DEBUG":
        from stream_lstm.telemetry.log_repeats import quiet_repeats

        quiet_repeats(["kafka"])  # kafka-python's reconnect errors: once a minute per kind
    _check_keys_cover_batch(settings)
    if "lstm" in settings["models"]:
        from stream_lstm.learner.cpu_threads import set_cpu_threads

        set_cpu_threads(settings["torch_threads"])

    def new_evaluator() -> PrequentialEvaluator:
        models = build_models(
            settings["models"], max_keys=settings["max_keys"], lstm=lstm_arguments(settings)
        )
        return PrequentialEvaluator(models, window=settings["window"], max_keys=settings["max_keys"])

    instance_id = check_instance_id(settings["instance_id"] or default_instance_id())
    kafka = KafkaSettings(
        bootstrap_servers=settings["bootstrap_servers"],
        input_topic=settings["input_topic"],
        output_topic=settings["output_topic"],
        dead_letter_topic=settings["dead_letter_topic"],
        group_id=settings["group_id"],
        exactly_once=settings["exactly_once"],
        transactional_id=settings["transactional_id"] or f"stream-lstm-{settings['group_id']}-{instance_id}",
        session_timeout_ms=settings["session_timeout_ms"],
        heartbeat_interval_ms=settings["heartbeat_interval_ms"],
        max_poll_interval_ms=settings["max_poll_interval_ms"],
        fetch_max_wait_ms=settings["fetch_max_wait_ms"],
        client=settings["kafka_client"],
    )
    settings_of_service = ServiceSettings(
        kafka=kafka,
        checkpoint_dir=Path(settings["checkpoint_dir"]),
        checkpoint_topic=settings["checkpoint_topic"] or None,
        batch_size=settings["batch_size"],
        checkpoint_every=settings["checkpoint_every"],
        checkpoint_interval_s=settings["checkpoint_interval"],
        limits=InputLimits(
            max_message_bytes=settings["max_message_bytes"],
            max_key_bytes=settings["max_key_bytes"],
            max_name_bytes=settings["max_name_bytes"],
            max_features=settings["max_message_features"],
            max_abs_value=settings["max_abs_value"],
        ),
        instance_id=instance_id,
        learner_process=_use_learner_process(settings["learner_process"]),
        torch_threads=settings["torch_threads"],
    )
    store_name = (
        f"checkpoint topic {settings['checkpoint_topic']}"
        if settings["checkpoint_topic"]
        else f"checkpoint directory {settings['checkpoint_dir']}"
    )

    def starting() -> tuple[bool, dict[str, Any]]:
        # Opening the store and loading the checkpoints may take a while (a checkpoint topic waits
        # for its broker): /healthz and /metrics answer meanwhile, so a probe sees a starting
        # service rather than none.
        return False, {"starting": f"opening the {store_name} and loading this instance's checkpoint"}

    telemetry = Telemetry()
    try:
        server = MetricsServer(
            telemetry.registry, starting, host=settings["metrics_host"], port=settings["metrics_port"]
        )
    except OSError as error:
        raise ConfigError(
            f"cannot serve metrics on {settings['metrics_host']}:{settings['metrics_port']}: {error.strerror}"
        ) from None
    server.start()
    print(
        f"stream-lstm {__version__}: {settings['input_topic']} -> {settings['output_topic']} "
        f"(dead letters: {settings['dead_letter_topic']}) on {settings['bootstrap_servers']}, "
        f"group {settings['group_id']}; metrics at http://127.0.0.1:{server.port}/metrics, "
        f"health at http://127.0.0.1:{server.port}/healthz",
        file=sys.stderr,
        flush=True,
    )
    try:
        service = StreamService(settings_of_service, new_evaluator=new_evaluator, telemetry=telemetry)
    except BaseException:
        server.stop()
        raise
    server.health = service.health

    def request_stop(signum: int, frame: object) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        service.run()
    finally:
        server.stop()
    print("stream-lstm: stopped cleanly", file=sys.stderr, flush=True)
    return 0


def _produce(args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser) -> int:
    import time
    from collections.abc import Iterator
    from itertools import islice

    from stream_lstm.kafka.connect import EventWriter
    from stream_lstm.messages.events import Event, encode_event
    from stream_lstm.telemetry.progress import ProgressLine

    if args.synthetic == bool(args.file):
        parser.error("give either FILE.csv or --synthetic")
    if args.file and not settings["label"]:
        parser.error("produce FILE.csv needs the label column: --label COL (or STREAM_LSTM_LABEL)")

    def one_pass() -> Iterator[Event]:
        if args.synthetic:
            from stream_lstm.offline.generator import temporal_stream

            return temporal_stream(args.events, n_keys=args.keys, seed=args.seed)
        from stream_lstm.offline.csv_source import CsvEventSource

        def report(bad: Any) -> None:
            print(f"{args.file}:{bad.line}: skipped: {bad.reason}", file=sys.stderr)

        return iter(
            CsvEventSource(
                args.file, label=settings["label"], key=settings["key"], ts=settings["ts"], on_bad_row=report
            )
        )

    def stream() -> Iterator[Event]:
        while True:
            yield from one_pass()
            if not args.repeat:
                return

    events: Iterator[Event] = islice(stream(), args.limit) if args.limit else stream()
    writer = EventWriter(settings["bootstrap_servers"], settings["topic"], client=settings["kafka_client"])
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


def _broker(args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser) -> int:
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


def _demo(args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser) -> int:
    from pathlib import Path

    from stream_lstm.cli.demo import run_demo

    return run_demo(
        events=args.events,
        keys=args.keys,
        rate=args.rate,
        workdir=Path(args.workdir),
        metrics_port=args.metrics_port,
    )


def _check_keys_cover_batch(settings: dict[str, Any]) -> None:
    if settings["max_keys"] < settings["batch_size"]:
        raise ConfigError(
            f"max_keys ({settings['max_keys']}) must be at least the batch size ({settings['batch_size']}): "
            "every key of a batch needs a state"
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
