"""The ``stream-lstm`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from stream_lstm import __version__
from stream_lstm.config import (
    LEARNER_SETTINGS,
    LSTM_HYPERPARAMETERS,
    Setting,
    add_settings,
    positive_int,
    resolve_settings,
)
from stream_lstm.errors import ConfigError, StreamLSTMError

RUNTIME_SETTINGS: tuple[Setting, ...] = (
    Setting("torch_threads", positive_int, 1, "CPU threads torch may use for the LSTM"),
)

EVALUATE_SETTINGS: tuple[Setting, ...] = (
    Setting("label", str, None, "name of the label column (required)"),
    Setting("key", str, None, "name of the key column; without it the file is one stream"),
    Setting("ts", str, None, "name of the timestamp column (seconds or ISO-8601)"),
    *LEARNER_SETTINGS,
    *RUNTIME_SETTINGS,
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

    generate = commands.add_parser(
        "generate",
        help="write a generated multi-key temporal stream as CSV (for demos and tests)",
        description=(
            "Write a stream of interleaved keys whose labels depend on each key's earlier events "
            "(columns key, ts, label, a, b, c): the current features alone predict nothing."
        ),
    )
    generate.add_argument("out", metavar="OUT.csv", help="where to write the CSV")
    generate.add_argument(
        "--events", type=positive_int, default=50_000, help="how many events (default: 50000)"
    )
    generate.add_argument("--keys", type=positive_int, default=1000, help="how many keys (default: 1000)")
    generate.add_argument("--seed", type=int, default=0, help="seed of the stream (default: 0)")
    generate.set_defaults(handler=_generate, settings=())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = resolve_settings(args, args.settings)
        return int(args.handler(args, settings, parser) or 0)
    except StreamLSTMError as error:
        print(f"stream-lstm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stream-lstm: interrupted", file=sys.stderr)
        return 130


def lstm_arguments(settings: dict[str, Any]) -> dict[str, Any]:
    """The LSTM's keyword arguments out of the resolved settings."""
    return {name: settings[name] for name in LSTM_HYPERPARAMETERS}


def _evaluate(args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser) -> int:
    from itertools import islice

    from stream_lstm.csv_source import BadRow, CsvEventSource
    from stream_lstm.evaluation import PrequentialEvaluator, build_models
    from stream_lstm.offline import evaluate_stream, evaluation_report
    from stream_lstm.progress import ProgressLine
    from stream_lstm.report import format_table, plot_rolling_accuracy, write_json

    if not settings["label"]:
        parser.error("evaluate needs the label column: --label COL (or STREAM_LSTM_LABEL)")
    if settings["max_keys"] < settings["batch_size"]:
        raise ConfigError(
            f"max_keys ({settings['max_keys']}) must be at least the batch size ({settings['batch_size']}): "
            "every key of a batch needs a state"
        )
    shown_bad_rows = 20

    def report_bad_row(bad: BadRow) -> None:
        if source.skipped <= shown_bad_rows:
            print(f"\r\033[K{args.file}:{bad.line}: skipped: {bad.reason}", file=sys.stderr)
        elif source.skipped == shown_bad_rows + 1:
            print("\r\033[K(further bad rows are counted, not shown)", file=sys.stderr)

    source = CsvEventSource(
        args.file, label=settings["label"], key=settings["key"], ts=settings["ts"], on_bad_row=report_bad_row
    )
    names = settings["models"]
    if "lstm" in names:
        from stream_lstm.learner import set_cpu_threads

        set_cpu_threads(settings["torch_threads"])
    models = build_models(names, max_keys=settings["max_keys"], lstm=lstm_arguments(settings))
    evaluator = PrequentialEvaluator(
        models, window=settings["window"], max_keys=settings["max_keys"], keep_trace=bool(args.plot)
    )
    total = source.count_rows()
    if args.limit:
        total = min(total, args.limit)
    progress = ProgressLine(total, enabled=not args.no_progress)
    events = islice(source, args.limit) if args.limit else iter(source)
    seconds = evaluate_stream(events, evaluator, batch_size=settings["batch_size"], progress=progress)

    learner = models.get("lstm")
    learner_info = None
    if learner is not None:
        learner_info = {**learner.hyperparameters(), "torch_device": str(learner.torch_device)}
    report = evaluation_report(
        source, evaluator, seconds=seconds, batch_size=settings["batch_size"], learner=learner_info
    )
    rate = f"{report['events_per_second']:,.0f}" if report["events_per_second"] else "n/a"
    print(
        f"{report['events']:,} events ({report['labelled']:,} labelled, {report['skipped']:,} bad rows "
        f"skipped) in {seconds:.2f} s: {rate} events/s, batch size {settings['batch_size']}"
    )
    print(format_table(report["models"], window=settings["window"]))
    if args.json:
        write_json(args.json, report)
        print(f"report written to {args.json}")
    if args.plot:
        curves = {name: evaluator.rolling_accuracy_curve(name) for name in evaluator.models}
        plot_rolling_accuracy(
            curves, args.plot, window=settings["window"], title=f"{args.file}: rolling accuracy"
        )
        print(f"plot written to {args.plot}")
    return 0


def _generate(args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser) -> int:
    from stream_lstm.generator import temporal_stream, write_csv

    count = write_csv(temporal_stream(args.events, n_keys=args.keys, seed=args.seed), args.out)
    print(f"wrote {count:,} events of {args.keys:,} keys to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
