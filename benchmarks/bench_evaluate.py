"""Accuracy and speed of `stream-lstm evaluate` on Elec2 and on a generated multi-key stream.

Runs the real command (CSV parsing, three models, scoring) for several batch sizes and prints one
table per stream: each model's accuracy, log loss, kappa-temporal and own events/s, and the
events/s of the whole run. The default batch size runs ``--repeats`` times (the machine's speed
varies from minute to minute): its row shows the median whole-run rate and the range. The runs
use `evaluate`'s defaults, so on these files (over 5,000 rows) the baselines run in a second
process beside the LSTM; below each table, pairs of default-batch runs in one process and in two
(``--parallel false`` / ``true``), alternating, show what the second process brings. Usage:
``python benchmarks/bench_evaluate.py [--batch-sizes 1,32,64,256] [--repeats 3]
[--generated-events N] [--markdown OUT.md]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine

from stream_lstm.cli.main import main as stream_lstm
from stream_lstm.config.declared import LEARNER_SETTINGS, PARALLEL_MIN_EVENTS
from stream_lstm.evaluation.report import render_table
from stream_lstm.offline.generator import temporal_stream, write_csv

ELEC2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "elec2.csv"
DEFAULT_BATCH = next(s.default for s in LEARNER_SETTINGS if s.name == "batch_size")


def run(path: Path, batch_size: int, extra: list[str], workdir: Path) -> dict:
    out = workdir / "report.json"
    argv = [
        "evaluate",
        str(path),
        "--batch-size",
        str(batch_size),
        "--json",
        str(out),
        "--no-progress",
        *extra,
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # the table below says it all
        status = stream_lstm(argv)
    if status != 0:
        raise SystemExit(f"stream-lstm {' '.join(argv)} failed with status {status}")
    return json.loads(out.read_text())


def table(title: str, reports: list[dict]) -> str:
    headers = ["batch", "model", "accuracy", "log_loss", "kappa_temporal", "model events/s", "run events/s"]
    rows = []
    for report in reports:
        for name, scores in report["models"].items():
            rows.append(
                [
                    str(report["batch_size"])
                    + (" (default)" if report["batch_size"] == DEFAULT_BATCH else ""),
                    name,
                    f"{scores['accuracy']:.4f}",
                    f"{scores['log_loss']:.4f}",
                    f"{scores['kappa_temporal']:.4f}",
                    f"{scores['events_per_second']:,.0f}",
                    _run_rate(report),
                ]
            )
    return f"{title}\n\n{render_table(headers, rows)}"


def _run_rate(report: dict) -> str:
    """The whole run's events/s; with repeats, their median and range."""
    rates = report.get("run_rates", [report["events_per_second"]])
    if len(rates) == 1:
        return f"{rates[0]:,.0f}"
    return f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default=f"1,32,{DEFAULT_BATCH},256")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the default batch size")
    parser.add_argument("--generated-events", type=int, default=50_000)
    parser.add_argument("--generated-keys", type=int, default=1000)
    parser.add_argument("--markdown", help="also write the tables to this Markdown file")
    args = parser.parse_args()
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    sections = [f"Machine: {describe_machine()}"]
    print(sections[0], flush=True)
    with tempfile.TemporaryDirectory() as work:
        workdir = Path(work)
        streams = []
        if ELEC2.is_file():
            streams.append((f"Elec2 ({ELEC2.name}, one stream, 45,312 events)", ELEC2, ["--label", "class"]))
        else:
            print(f"Elec2 skipped: {ELEC2} not found", flush=True)
        generated = workdir / "generated.csv"
        write_csv(temporal_stream(args.generated_events, n_keys=args.generated_keys, seed=7), generated)
        streams.append(
            (
                f"Generated stream ({args.generated_events:,} events, {args.generated_keys:,} keys)",
                generated,
                ["--label", "label", "--key", "key", "--ts", "ts"],
            )
        )
        for title, path, extra in streams:
            reports = []
            pairs = []
            for size in sizes:
                print(f"  {title}: batch size {size} ...", flush=True)
                if size != DEFAULT_BATCH:
                    reports.append(run(path, size, extra, workdir))
                    continue
                # Two-process runs alternate with one-process runs, to show what the second process
                # brings in the same minutes; the row shows the two-process runs.
                for _ in range(max(args.repeats, 1)):
                    alone = run(path, size, [*extra, "--parallel", "false"], workdir)
                    pairs.append((alone, run(path, size, [*extra, "--parallel", "true"], workdir)))
                report = pairs[0][1]
                report["run_rates"] = [beside["events_per_second"] for _, beside in pairs]
                reports.append(report)
            section = table(title, reports)
            if pairs:
                section += (
                    f"\n\nbatch {DEFAULT_BATCH}, whole run, one process (--parallel false) / two "
                    f"processes (--parallel true; auto's choice from {PARALLEL_MIN_EVENTS:,} rows on), "
                    "alternating: "
                    + ", ".join(
                        f"{alone['events_per_second']:,.0f} / {beside['events_per_second']:,.0f}"
                        for alone, beside in pairs
                    )
                )
            sections.append(section)
            print("\n" + sections[-1] + "\n", flush=True)
    if args.markdown:
        body = "\n\n".join(f"```\n{section}\n```" if i else section for i, section in enumerate(sections))
        Path(args.markdown).write_text(f"# evaluate benchmark\n\n{body}\n")
        print(f"written to {args.markdown}")


if __name__ == "__main__":
    main()
