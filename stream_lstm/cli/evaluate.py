"""``stream-lstm evaluate``: a CSV file through the models, test-then-train, and their scores."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from stream_lstm.cli.arguments import SubParsers, add_config_argument
from stream_lstm.config.declared import (
    EVALUATE_SETTINGS,
    PARALLEL_MIN_EVENTS,
    check_keys_cover_batch,
    csv_columns,
    lstm_arguments,
)
from stream_lstm.config.setting import add_settings, positive_int
from stream_lstm.errors import ConfigError

#: Bad rows reported one by one; the further ones are only counted.
SHOWN_BAD_ROWS = 20

#: Bad rows quoted again in the closing error, with the hints.
QUOTED_BAD_ROWS = 3

#: Exit status of an evaluation whose file failed the checks (no usable row, no label, too many
#: bad rows); usage and configuration errors exit with 2.
DATA_FAILED = 1


def add_command(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``evaluate`` with its arguments and settings."""
    evaluate = commands.add_parser(
        "evaluate",
        help="stream a CSV file through the models, test-then-train, and score them",
        description=(
            "Stream a CSV file through the models in file order (prequential: each micro-batch "
            "is predicted before it is learned), print a table of scores, and optionally write "
            "a JSON report and a plot of rolling accuracy. Other columns are features (numbers, "
            "true/false, or categories with --categorical); an empty cell is a missing value; bad "
            "rows are reported by line and skipped. Exit status 1 when no row is usable, no row "
            "has a label, or more than --max-skipped of the rows are bad (with what to pass); 2 "
            "for a usage error."
        ),
    )
    evaluate.add_argument("file", metavar="FILE.csv", help="the CSV file; its first line names the columns")
    evaluate.add_argument("--json", metavar="OUT.json", help="write the full report here")
    evaluate.add_argument("--plot", metavar="OUT.png", help="write a plot of rolling accuracy here")
    evaluate.add_argument("--limit", type=positive_int, metavar="N", help="stop after N events")
    evaluate.add_argument("--no-progress", action="store_true", help="do not show the progress line")
    add_config_argument(evaluate)
    add_settings(evaluate, EVALUATE_SETTINGS)
    evaluate.set_defaults(handler=evaluate_command, settings=EVALUATE_SETTINGS)


def use_second_process(parallel: bool | str, events: int) -> bool:
    """Whether ``evaluate`` runs the baselines in a second process (``--parallel``).

    ``auto`` needs a second CPU and a file long enough to repay the second process (its start-up
    overlaps this one's, but it reads the file again: on 2 cores the whole command is faster
    from about 5,000 events on, 0.2 s at 5,000 and 0.4 s at 10,000 on Elec2).
    """
    from stream_lstm.learner.cpu_threads import usable_cpus

    if parallel == "auto":
        return events >= PARALLEL_MIN_EVENTS and usable_cpus() > 1
    return bool(parallel)


def evaluate_command(
    args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser
) -> int:
    """Evaluate the models on ``args.file``; print the table, write the report and plot asked for."""
    from stream_lstm.evaluation.mixture import MIXTURE
    from stream_lstm.evaluation.prequential import build_evaluator
    from stream_lstm.evaluation.report import (
        format_table,
        plot_rolling_accuracy,
        require_plotting,
        write_json,
    )
    from stream_lstm.offline.csv_source import BadRow
    from stream_lstm.offline.evaluate import CsvSpec, SideLane, evaluate_stream, evaluation_report
    from stream_lstm.telemetry.progress import ProgressLine

    if not settings["label"]:
        parser.error("evaluate needs the label column: --label COL (or STREAM_LSTM_LABEL)")
    check_keys_cover_batch(settings)
    if args.plot:
        require_plotting()

    # On a terminal the progress line is cleared before a message; elsewhere no escape codes.
    clear = "\r\033[K" if sys.stderr.isatty() else ""

    def report_bad_row(bad: BadRow) -> None:
        if source.skipped <= SHOWN_BAD_ROWS:
            print(f"{clear}{args.file}:{bad.line}: skipped: {bad.reason}", file=sys.stderr)
        elif source.skipped == SHOWN_BAD_ROWS + 1:
            print(f"{clear}(further bad rows are counted, not shown)", file=sys.stderr)

    spec = CsvSpec(args.file, **_tuples(csv_columns(settings)), limit=args.limit)
    source = spec.reader(on_bad_row=report_bad_row)
    total = source.count_rows()
    if total == 0:
        raise ConfigError(f"{args.file} has no rows below its header: nothing to evaluate")
    names = settings["models"]
    # The LSTM keeps this process; the baselines, when there are any, may learn beside it, and the
    # second process then scores every model, the LSTM from the probabilities sent from here.
    baselines = [name for name in names if name not in ("lstm", MIXTURE)]
    if args.limit:
        total = min(total, args.limit)
    parallel = "lstm" in names and bool(baselines) and use_second_process(settings["parallel"], total)
    keep_trace = bool(args.plot)
    # Started first, so that its start-up overlaps this process's (torch's import above all); it
    # reads no event before evaluate_stream starts the clock.
    side_lane = None
    if parallel:
        side_lane = SideLane(
            spec,
            names,  # the mixture mixes in this order
            batch_size=settings["batch_size"],
            window=settings["window"],
            max_keys=settings["max_keys"],
            keep_trace=keep_trace,
            lstm=lstm_arguments(settings),
            elsewhere=["lstm"],
        )
    try:
        if "lstm" in names:
            from stream_lstm.learner.cpu_threads import set_cpu_threads

            set_cpu_threads(settings["torch_threads"])
        evaluator = build_evaluator(
            ["lstm"] if parallel else names,
            window=settings["window"],
            max_keys=settings["max_keys"],
            keep_trace=keep_trace,
            lstm=lstm_arguments(settings),
            scored_elsewhere=parallel,
        )
        models = evaluator.models
        progress = ProgressLine(total, enabled=not args.no_progress)
        seconds, results = evaluate_stream(
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
        results,
        seconds=seconds,
        batch_size=settings["batch_size"],
        learner=learner_info,
        processes=2 if parallel else 1,
    )
    if report["events"] == 0:
        return _data_failed(args.file, source, settings, "no row could be read: every row was skipped")
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
        curves = {name: results.rolling_accuracy_curve(name) for name in results.scores}
        plot_rolling_accuracy(
            curves, args.plot, window=settings["window"], title=f"{args.file}: rolling accuracy"
        )
        print(f"plot written to {args.plot}")
    if report["labelled"] == 0:
        return _data_failed(
            args.file,
            source,
            settings,
            f"no row has a label in column {settings['label']!r}: nothing was scored",
        )
    rows = report["events"] + source.skipped
    if source.skipped > settings["max_skipped"] * rows:
        return _data_failed(
            args.file,
            source,
            settings,
            f"{source.skipped:,} of {rows:,} rows were skipped ({source.skipped / rows:.1%}), more than "
            f"--max-skipped {settings['max_skipped']:.0%} allows",
        )
    return 0


def _tuples(columns: dict[str, Any]) -> dict[str, Any]:
    """The CSV options with lists as tuples (a ``CsvSpec`` is frozen and goes to another process)."""
    return {name: tuple(value) if isinstance(value, list) else value for name, value in columns.items()}


def _data_failed(file: str, source: Any, settings: dict[str, Any], problem: str) -> int:
    """Say why the file failed, quote its first bad rows and what to pass; the exit status."""
    lines = [f"stream-lstm: error: {file}: {problem}"]
    for bad in source.bad_rows[:QUOTED_BAD_ROWS]:
        lines.append(f"  line {bad.line}: {bad.reason}")
    hints = source.summary.hints(positive_label=settings["positive_label"], ts=settings["ts"])
    lines += [f"  hint: {hint}" for hint in hints]
    print("\n".join(lines), file=sys.stderr)
    return DATA_FAILED
