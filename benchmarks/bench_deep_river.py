"""stream-lstm's LSTM against deep-river's LSTMClassifier on Elec2: accuracy and events/s side by side.

deep-river is the river ecosystem's online deep-learning library, so it is the natural yardstick
for an online LSTM. It is an optional install, for this benchmark only: the script keeps it in a
virtual environment of its own (``--venv``, made and reused here) and runs it there in a
subprocess, while stream-lstm runs in this process through ``stream-lstm evaluate``.

Why a venv of its own, and why deep-river is installed without its dependencies: no deep-river
release accepts the torch this project pins (0.3.4, the newest, requires ``torch>=2.5,<2.6`` and
``river>=0.25,<0.26``; older ones pin torch 2.2 or older), and a torch from PyPI would be a
multi-GB CUDA build. So the venv gets the project's torch (``--torch-spec``, kept by a constraints
file so that nothing upgrades it), then ``deep-river`` with ``--no-deps``, then its other declared
dependencies, pinned, plus pytest, which deep-river 0.3.4 imports without declaring it.

deep-river runs twice: on the same columns as stream-lstm (every one but ``class``), and with the
previous event's label as one more feature (``+ prev label``; ``--no-previous-label`` skips it),
because stream-lstm's LSTM has the previous label among its inputs: that second run is the
like-for-like comparison of accuracy.

Both models see the same events (read once, with the project's CSV reader), in file order,
test-then-train per event or per micro-batch, and both are scored by the project's own
:mod:`stream_lstm.evaluation.prequential` code. Events/s is each model's own predict-and-learn time (no CSV
parsing, no scoring), with the same number of torch threads on both sides.

Usage: ``python benchmarks/bench_deep_river.py [--limit N] [--batch-sizes 64,1] [--threads 1]
[--venv DIR | --python PATH] [--markdown OUT.md]``. ``--markdown`` appends a section to the file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ELEC2 = ROOT.parent / "shared" / "data" / "elec2.csv"
LABEL = "class"
DEFAULT_VENV = ROOT / ".bench-venv" / "deep-river"

#: The torch of both sides: the project's pin (see ``TORCH_SPEC`` in the Makefile).
TORCH_SPEC = "torch==2.13.0"
DEEP_RIVER_SPEC = "deep-river==0.3.4"
#: deep-river 0.3.4's declared dependencies other than torch, at versions that install together on
#: Python 3.11, and pytest, which ``deep_river.utils`` imports at import time.
DEEP_RIVER_DEPENDENCIES = (
    "river==0.25.0",
    "numpy==2.4.6",
    "pandas==2.3.3",
    "scikit-learn==1.9.1",
    "sortedcontainers==2.4.0",
    "tqdm==4.66.6",
    "torchviz==0.0.3",
    "pytest==9.2.0",
)

#: deep-river's side: its LSTMClassifier as documented (hidden size 16, rolling window of 10
#: events), with the optimizer and learning rate of its README's quick start (Adam, 1e-3) and a
#: river StandardScaler in front, as there.
DEEP_RIVER_SETTINGS: dict[str, Any] = {
    "hidden_size": 16,
    "window_size": 10,
    "optimizer_fn": "adam",
    "lr": 1e-3,
    "seed": 42,
}
#: The extra feature of the "+ previous label" variant of deep-river.
PREVIOUS_LABEL = "previous_label"


# ---------------------------------------------------------------- deep-river's side (its venv)


def deep_river_worker(events_path: Path, out_path: Path, *, threads: int, previous_label: bool) -> None:
    """Run deep-river on the events in ``events_path`` (JSON lines); write probabilities and time.

    With ``previous_label``, the previous event's label (0.5 before the first) is one more
    feature, as stream-lstm's LSTM has it among its inputs. This runs in deep-river's venv: it
    imports neither stream_lstm nor anything else of this project.
    """
    from importlib.metadata import version

    import torch
    from deep_river.classification import LSTMClassifier
    from river import compose, preprocessing

    torch.set_num_threads(threads)
    rows = [json.loads(line) for line in events_path.read_text().splitlines()]
    n_features = len({name for row in rows for name in row["x"]}) + previous_label
    torch.manual_seed(DEEP_RIVER_SETTINGS["seed"])  # the module is built before deep-river seeds
    model = compose.Pipeline(
        preprocessing.StandardScaler(),
        LSTMClassifier(n_features=n_features, is_class_incremental=True, **DEEP_RIVER_SETTINGS),
    )
    probabilities = []
    last = 0.5
    started = time.perf_counter()
    for row in rows:
        x, y = row["x"], row["y"]
        if previous_label:
            x = {**x, PREVIOUS_LABEL: last}
        proba = model.predict_proba_one(x)
        probabilities.append(float(proba.get(1, 0.5)))  # its binary keys are False/True
        if y is not None:
            model.learn_one(x, y)
            last = y
    seconds = time.perf_counter() - started
    versions = {name: version(name) for name in ("deep-river", "river", "torch")}
    result = {"probabilities": probabilities, "seconds": seconds, "versions": versions}
    out_path.write_text(json.dumps(result))


# ---------------------------------------------------------------- installing deep-river


def pins(torch_spec: str) -> list[str]:
    """Every requirement the venv is made of, one a line: the marker of an up-to-date venv."""
    return [torch_spec, f"{DEEP_RIVER_SPEC} (--no-deps)", *DEEP_RIVER_DEPENDENCIES]


def manual_install_hint(venv: Path, torch_spec: str) -> str:
    return (
        "Install deep-river by hand, then rerun with --python:\n"
        f"  python3 -m venv {venv}\n"
        f"  echo '{torch_spec}' > constraints.txt\n"
        f"  {venv}/bin/pip install -c constraints.txt '{torch_spec}'   # a CPU build of torch is enough\n"
        f"  {venv}/bin/pip install --no-deps {DEEP_RIVER_SPEC}\n"
        f"  {venv}/bin/pip install -c constraints.txt {' '.join(DEEP_RIVER_DEPENDENCIES)}\n"
        f"  python benchmarks/bench_deep_river.py --python {venv}/bin/python"
    )


def pip(python: Path, args: list[str], venv: Path, torch_spec: str) -> None:
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise SystemExit(
            f"{tail}\n\nerror: `pip install {' '.join(args)}` failed in {venv} "
            f"(exit {done.returncode}; no network?).\n{manual_install_hint(venv, torch_spec)}"
        )


def ensure_deep_river(venv: Path, torch_spec: str) -> Path:
    """The Python of a venv with deep-river at the pinned versions; made or updated when needed."""
    python = venv / "bin" / "python"
    marker = venv / "bench-pins.txt"
    wanted = "\n".join(pins(torch_spec)) + "\n"
    if python.exists() and marker.is_file() and marker.read_text() == wanted:
        return python
    print(f"installing {DEEP_RIVER_SPEC} into {venv} (once; later runs reuse it) ...", flush=True)
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        raise SystemExit(
            f"{made.stderr}\nerror: could not create {venv}\n{manual_install_hint(venv, torch_spec)}"
        )
    constraints = venv / "constraints.txt"
    constraints.write_text(torch_spec + "\n")  # nothing below may replace this torch
    pip(python, ["-c", str(constraints), torch_spec], venv, torch_spec)
    pip(python, ["--no-deps", DEEP_RIVER_SPEC], venv, torch_spec)
    pip(python, ["-c", str(constraints), *DEEP_RIVER_DEPENDENCIES], venv, torch_spec)
    marker.write_text(wanted)
    return python


# ---------------------------------------------------------------- running both sides


def read_events(path: Path, limit: int | None) -> list:
    """The stream's events, with the project's CSV reader (the same events for both sides)."""
    from itertools import islice

    from stream_lstm.offline.csv_source import CsvEventSource

    return list(islice(CsvEventSource(path, label=LABEL), limit))


def write_events(events: list, path: Path) -> None:
    """The events as JSON lines ``{"x": features, "y": label}``, for deep-river's venv."""
    path.write_text("".join(json.dumps({"x": e.features, "y": e.label}) + "\n" for e in events))


def run_deep_river(
    python: Path, events_path: Path, *, threads: int, previous_label: bool, workdir: Path
) -> dict[str, Any]:
    """Run :func:`deep_river_worker` under ``python``; its probabilities, seconds and versions."""
    out_path = workdir / "deep-river.json"
    command = [str(python), __file__, "--worker", str(events_path), str(out_path), "--threads", str(threads)]
    command += ["--previous-label"] if previous_label else []
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"deep-river failed: {' '.join(command)}")
    return json.loads(out_path.read_text())


class Replay:
    """A model that answers with probabilities made elsewhere, in order (for scoring them)."""

    def __init__(self, probabilities: Sequence[float]) -> None:
        self.probabilities = probabilities
        self.next = 0

    def predict_batch(self, events: Sequence) -> Any:
        import numpy as np

        start, self.next = self.next, self.next + len(events)
        return np.asarray(self.probabilities[start : self.next], dtype=np.float64)

    def learn_batch(self, events: Sequence) -> None:
        pass


def score_deep_river(events: list, result: dict[str, Any]) -> dict[str, Any]:
    """deep-river's scores, by the same code that scores stream-lstm; its own events/s."""
    from stream_lstm.evaluation.prequential import PrequentialEvaluator
    from stream_lstm.offline.evaluate import evaluate_stream

    evaluator = PrequentialEvaluator({"deep_river": Replay(result["probabilities"])})
    evaluate_stream(events, evaluator, batch_size=1024)
    scores = evaluator.report()["deep_river"]
    scores["events_per_second"] = len(events) / result["seconds"]
    return scores


def run_stream_lstm(path: Path, batch_size: int, limit: int | None, threads: int, workdir: Path) -> dict:
    """``stream-lstm evaluate --models lstm`` with its defaults; its JSON report."""
    from stream_lstm.cli.main import main as stream_lstm

    out = workdir / f"stream-lstm-{batch_size}.json"
    argv = ["evaluate", str(path), "--label", LABEL, "--models", "lstm", "--batch-size", str(batch_size)]
    argv += ["--torch-threads", str(threads), "--json", str(out), "--no-progress"]
    argv += ["--limit", str(limit)] if limit else []
    with contextlib.redirect_stdout(io.StringIO()):  # the table below says it all
        status = stream_lstm(argv)
    if status != 0:
        raise SystemExit(f"stream-lstm {' '.join(argv)} failed with status {status}")
    return json.loads(out.read_text())


# ---------------------------------------------------------------- presenting

HEADERS = ["model", "batch", "events", "accuracy", "log_loss", "kappa_temporal", "events/s"]


def row(model: str, batch: str, events: int, scores: dict[str, Any], reference_rate: float) -> list[str]:
    rate = scores["events_per_second"]
    return [
        model,
        batch,
        f"{events:,}",
        f"{scores['accuracy']:.4f}",
        f"{scores['log_loss']:.4f}",
        f"{scores['kappa_temporal']:.4f}",
        f"{rate:,.0f}",
        f"{rate / reference_rate:.1f}x",
    ]


def verdict(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    """Whether ours reaches 20x deep-river's events/s at equal or better accuracy."""
    ratio = ours["events_per_second"] / theirs["events_per_second"]
    gain = ours["accuracy"] - theirs["accuracy"]
    met = ratio >= 20 and gain >= 0
    return f"{ratio:.1f}x, accuracy {gain:+.4f}: {'met' if met else 'not met'}"


def render(
    title: str, events: int, theirs: dict[str, dict], ours: dict[int, dict], versions: dict[str, str]
) -> tuple[str, list[str]]:
    """The table (events/s also as a multiple of the first deep-river row's) and notes under it."""
    from stream_lstm.config.declared import LEARNER_SETTINGS
    from stream_lstm.evaluation.report import render_table

    default_batch = next(s.default for s in LEARNER_SETTINGS if s.name == "batch_size")
    reference_name = next(iter(theirs))
    reference = theirs[reference_name]["events_per_second"]
    rows = [row(name, "1", events, scores, reference) for name, scores in theirs.items()]
    for batch, report in ours.items():
        label = f"{batch} (default)" if batch == default_batch else str(batch)
        rows.append(row("stream-lstm lstm", label, events, report["models"]["lstm"], reference))
    table = render_table([*HEADERS, f"vs {reference_name}"], rows)
    lstm = next(iter(ours.values()))["lstm"]
    settings = DEEP_RIVER_SETTINGS
    variant = "; `+ prev label`: the previous event's label as one more feature" if len(theirs) > 1 else ""
    notes = [
        f"deep-river {versions['deep-river']} (river {versions['river']}, torch {versions['torch']}): "
        f"Pipeline(StandardScaler(), LSTMClassifier(hidden_size={settings['hidden_size']}, "
        f"window_size={settings['window_size']}, optimizer_fn={settings['optimizer_fn']!r}, "
        f"lr={settings['lr']})), predict_proba_one then learn_one per event, on every column but "
        f"`{LABEL}`{variant}.",
        f"stream-lstm: `stream-lstm evaluate --models lstm` defaults (hidden {lstm['hidden_size']}, "
        f"TBPTT {lstm['tbptt_steps']}, Adam lr {lstm['learning_rate']}); besides the same columns, "
        "its input has the previous label and the time gap.",
        "events/s: the model's own predict + learn time (no CSV parsing, no scoring); both scored by "
        "stream_lstm.evaluation.prequential on the same events.",
    ]
    for name, scores in theirs.items():
        checks = "; ".join(
            f"batch {batch}: {verdict(report['models']['lstm'], scores)}" for batch, report in ours.items()
        )
        notes.append(
            f"target, stream-lstm >= 20x the events/s of {name} at equal or better accuracy: {checks}"
        )
    return f"{title}\n\n{table}", notes


def append_markdown(path: Path, machine: str, table: str, notes: list[str]) -> None:
    bullets = "\n".join(f"* {note}" for note in notes)
    section = f"\n## stream-lstm vs deep-river\n\nMachine: {machine}\n\n```\n{table}\n```\n\n{bullets}\n"
    with path.open("a") as handle:
        handle.write(section)


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ELEC2, help=f"the Elec2 CSV (default: {ELEC2})")
    parser.add_argument("--limit", type=int, help="only the first N events (default: the whole stream)")
    parser.add_argument("--batch-sizes", default="64,1", help="stream-lstm's batch sizes (default: 64,1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of both (default: 1)")
    parser.add_argument(
        "--no-previous-label", action="store_true", help="skip deep-river's `+ prev label` run"
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="deep-river's venv, made if needed")
    parser.add_argument("--python", type=Path, help="a Python with deep-river installed (no install then)")
    parser.add_argument("--torch-spec", default=TORCH_SPEC, help=f"the venv's torch (default: {TORCH_SPEC})")
    parser.add_argument("--markdown", type=Path, help="append the table as a section to this Markdown file")
    parser.add_argument("--worker", nargs=2, type=Path, metavar=("EVENTS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--previous-label", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        deep_river_worker(*args.worker, threads=args.threads, previous_label=args.previous_label)
        return
    if not args.data.is_file():
        print(f"deep-river benchmark skipped: {args.data} not found")
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe_machine

    started = time.perf_counter()
    machine = describe_machine()
    print(f"Machine: {machine}", flush=True)
    python = args.python or ensure_deep_river(args.venv.resolve(), args.torch_spec)
    events = read_events(args.data, args.limit)
    variants = {"deep-river": False}
    if not args.no_previous_label:
        variants["deep-river + prev label"] = True
    theirs, ours = {}, {}
    with tempfile.TemporaryDirectory() as work:
        workdir = Path(work)
        write_events(events, workdir / "events.jsonl")
        for name, previous_label in variants.items():
            print(f"  {name} on {len(events):,} events ...", flush=True)
            result = run_deep_river(
                python,
                workdir / "events.jsonl",
                threads=args.threads,
                previous_label=previous_label,
                workdir=workdir,
            )
            theirs[name] = score_deep_river(events, result)
        for batch in (int(size) for size in args.batch_sizes.split(",")):
            print(f"  stream-lstm lstm, batch size {batch} ...", flush=True)
            ours[batch] = run_stream_lstm(args.data, batch, args.limit, args.threads, workdir)
    if any(report["events"] != len(events) for report in ours.values()):
        raise SystemExit("stream-lstm and deep-river did not see the same number of events")
    span = "all" if args.limit is None or args.limit > len(events) else "first"
    title = (
        f"Elec2 ({args.data.name}, one stream, {span} {len(events):,} events, "
        f"{args.threads} torch thread(s)): stream-lstm vs deep-river"
    )
    table, notes = render(title, len(events), theirs, ours, result["versions"])
    print(f"\n{table}\n\n" + "\n".join(f"* {note}" for note in notes))
    print(f"\n(run took {time.perf_counter() - started:.0f} s)")
    if args.markdown:
        append_markdown(args.markdown, machine, table, notes)
        print(f"appended to {args.markdown}")


if __name__ == "__main__":
    main()
