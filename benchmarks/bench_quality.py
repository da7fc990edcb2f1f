"""Prediction quality on Elec2 and on generated temporal streams, against the best achievable.

Runs `evaluate`'s machinery (`build_evaluator`: the models and their mixture, micro-batches of the
default size, all models in this process) on Elec2 and on each stream of the suite
(:data:`stream_lstm.offline.families.SUITE`: lags, hidden regimes, drift, seasonality, label
noise, no signal). One table: per stream and model, whole-stream accuracy, log loss,
kappa-temporal and the model's own events/s, beside the oracle's expected accuracy and log loss
(the best achievable; unknown for Elec2).

With ``--variants``, a second table shows the LSTM alone under other settings on the same streams
(the sample-efficiency levers: batch size, learning rate, optimizer steps per batch), each a
comma-separated list of ``batch=``, ``lr=``, ``boost=`` (the step size's early boost, its
half-life in optimizer steps, 0: none), ``steps=``, ``extra=`` (the labelled events at a stream's
start whose batches get one more step, 0: none), ``odds=`` (the prior log-odds of the network
against the base rate, 0: no average with the base rate), ``trend=`` (trend scales) and ``rate=``
(the stream rate's half-life, 0: none), variants separated by ``;``. Usage:
``python benchmarks/bench_quality.py [--events 20000] [--models lstm,logreg,logreg_lags,no_change,mix]
[--streams a,b] [--seeds 0,1] [--variants "batch=1,steps=1,extra=0;lr=0.03"] [--markdown OUT.md]``
(appends to OUT.md). A third table ranks the variants by their mean log loss over the streams, with
each one's worst accuracy shortfall against the first variant (batch 1 by default). A fourth
sets the LSTM beside logreg at the same batch size, at the default batch and at every other batch
size of the variants (where logreg runs beside the LSTM): where the LSTM's accuracy is the higher,
its log loss should not be the higher.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import append_results, describe_machine

from stream_lstm.config.declared import LEARNER_SETTINGS, lstm_arguments
from stream_lstm.evaluation.prequential import build_evaluator
from stream_lstm.evaluation.report import render_table
from stream_lstm.learner.cpu_threads import set_cpu_threads
from stream_lstm.messages.events import Event
from stream_lstm.offline.csv_source import CsvEventSource
from stream_lstm.offline.evaluate import evaluate_stream
from stream_lstm.offline.families import SUITE, suite_stream

ELEC2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "elec2.csv"
DEFAULTS = {s.name: s.default for s in LEARNER_SETTINGS}
#: The LSTM settings compared by default: per-event learning (the reference of sample
#: efficiency), then the default batch with the levers the defaults were chosen among.
VARIANTS = (
    "batch=1,steps=1,extra=0;batch=1,steps=1,extra=0,boost=0;steps=2;extra=0;steps=3,extra=0;extra=3000;"
    "extra=8000;odds=0;odds=5;odds=20;steps=1;lr=0.02;boost=0;boost=200;trend=3;trend=5;rate=0;rate=28"
)


@dataclass
class Stream:
    """A stream of the benchmark: its events and, where known, the best achievable scores."""

    name: str
    events: list[Event]
    best_accuracy: float = math.nan
    best_log_loss: float = math.nan


def streams(names: Sequence[str], n_events: int, seeds: Sequence[int]) -> list[Stream]:
    """Elec2 (when present and asked for) and the generated streams ``names``, one of each per
    seed (named ``name/seed`` when there are several seeds)."""
    chosen = []
    for name in names:
        if name == "elec2":
            if not ELEC2.is_file():
                print(f"Elec2 skipped: {ELEC2} not found", flush=True)
                continue
            chosen.append(Stream("elec2", list(CsvEventSource(ELEC2, label="class"))))
            continue
        for seed in seeds:
            generated = suite_stream(name, n_events, seed)
            label = name if len(seeds) == 1 else f"{name}/{seed}"
            chosen.append(Stream(label, generated.events, generated.best_accuracy, generated.best_log_loss))
    return chosen


def evaluate(stream: Stream, models: Sequence[str], *, batch: int, lstm: dict[str, Any]) -> dict[str, Any]:
    """One prequential run of ``models``: their reports, and the whole run's events/s."""
    # The service's defaults, passed as the service passes them: the river API's own defaults differ.
    evaluator = build_evaluator(models, lstm={**lstm_arguments(DEFAULTS), "device": "cpu", **lstm})
    started = time.perf_counter()
    evaluate_stream(stream.events, evaluator, batch_size=batch)
    seconds = time.perf_counter() - started
    return {"models": evaluator.report(), "run_rate": len(stream.events) / seconds}


def parse_variant(text: str) -> tuple[str, int, dict[str, Any]]:
    """A variant ``batch=8,lr=0.03,steps=2``: its label, batch size and LSTM keyword arguments."""
    batch, lstm = DEFAULTS["batch_size"], {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name == "batch":
            batch = int(value)
        elif name == "lr":
            lstm["learning_rate"] = float(value)
        elif name == "steps":
            lstm["steps_per_batch"] = int(value)
        elif name == "trend":
            lstm["trend_scales"] = int(value)
        elif name == "rate":
            lstm["stream_rate_half_life"] = float(value)
        elif name == "boost":
            lstm["lr_boost_half_life"] = float(value)
        elif name == "extra":
            lstm["extra_step_events"] = int(value)
        elif name == "odds":
            lstm["base_rate_odds"] = float(value)
        else:
            raise SystemExit(
                f"unknown variant setting {name!r} in {text!r}:"
                " use batch=, lr=, boost=, steps=, extra=, odds=, trend=, rate="
            )
    learning_rate = lstm.get("learning_rate", DEFAULTS["learning_rate"])
    boost = lstm.get("lr_boost_half_life", DEFAULTS["lr_boost_half_life"])
    steps = lstm.get("steps_per_batch", DEFAULTS["steps_per_batch"])
    extra = lstm.get("extra_step_events", DEFAULTS["extra_step_events"])
    trend = lstm.get("trend_scales", DEFAULTS["trend_scales"])
    rate = lstm.get("stream_rate_half_life", DEFAULTS["stream_rate_half_life"])
    odds = lstm.get("base_rate_odds", DEFAULTS["base_rate_odds"])
    label = (
        f"batch {batch}, lr {learning_rate}, boost {boost:g}, {steps} step{'s' * (steps > 1)}, extra {extra},"
        f" odds {odds:g}, trend {trend}, rate {rate:g}"
    )
    return label, batch, lstm


def _score(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def quality_table(results: list[tuple[Stream, dict[str, Any]]]) -> str:
    headers = ["stream", "events", "best acc", "best log loss", "model", "accuracy", "log_loss", "kappa_t"]
    headers += ["model events/s", "run events/s"]
    rows = []
    for stream, run in results:
        for name, scores in run["models"].items():
            rows.append(
                [
                    stream.name,
                    f"{len(stream.events):,}",
                    _score(stream.best_accuracy),
                    _score(stream.best_log_loss),
                    name,
                    _score(scores["accuracy"]),
                    _score(scores["log_loss"]),
                    _score(scores["kappa_temporal"]),
                    f"{scores['events_per_second']:,.0f}",
                    f"{run['run_rate']:,.0f}",
                ]
            )
    return render_table(headers, rows)


def variants_table(results: list[tuple[Stream, str, dict[str, Any]]]) -> str:
    headers = ["stream", "best acc", "LSTM setting", "accuracy", "log_loss", "rolling acc", "events/s"]
    rows = []
    for stream, label, run in results:
        scores = run["models"]["lstm"]
        rolling = scores.get("rolling", {}).get("accuracy", math.nan)
        rows.append(
            [
                stream.name,
                _score(stream.best_accuracy),
                label,
                _score(scores["accuracy"]),
                _score(scores["log_loss"]),
                _score(rolling),
                f"{run['run_rate']:,.0f}",
            ]
        )
    return render_table(headers, rows)


def calibration_table(runs: list[tuple[Stream, str, dict[str, Any]]]) -> str:
    """Per stream and LSTM setting, the LSTM beside ``logreg`` run at the same batch size: where
    the LSTM's accuracy is the higher, its log loss should not be the higher (issue 20)."""
    headers = ["stream", "LSTM setting", "lstm acc", "lstm log_loss", "logreg acc", "logreg log_loss"]
    headers += ["holds"]
    rows = []
    for stream, label, run in runs:
        lstm, logreg = run["models"]["lstm"], run["models"]["logreg"]
        higher = lstm["accuracy"] > logreg["accuracy"]
        holds = "yes" if lstm["log_loss"] <= logreg["log_loss"] else "NO" if higher else "-"
        rows.append(
            [
                stream.name,
                label,
                _score(lstm["accuracy"]),
                _score(lstm["log_loss"]),
                _score(logreg["accuracy"]),
                _score(logreg["log_loss"]),
                holds,
            ]
        )
    return render_table(headers, rows)


def choice_table(results: list[tuple[Stream, str, dict[str, Any]]]) -> str:
    """Per LSTM setting, its mean over the streams: log loss (what the defaults are chosen by),
    accuracy, accuracy short of the first setting's (the batch-1 reference when it comes first)
    and events/s; best first."""
    by_label: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for stream, label, run in results:
        by_label.setdefault(label, []).append((stream.name, run))
    reference = {name: run["models"]["lstm"]["accuracy"] for name, run in next(iter(by_label.values()))}
    rows = []
    for label, runs in by_label.items():
        scores = [run["models"]["lstm"] for _, run in runs]
        gaps = [reference[name] - run["models"]["lstm"]["accuracy"] for name, run in runs]
        rows.append(
            (
                sum(s["log_loss"] for s in scores) / len(scores),
                [
                    label,
                    f"{sum(s['log_loss'] for s in scores) / len(scores):.4f}",
                    f"{sum(s['accuracy'] for s in scores) / len(scores):.4f}",
                    f"{max(gaps):+.4f}",
                    f"{sum(run['run_rate'] for _, run in runs) / len(runs):,.0f}",
                    str(len(runs)),
                ],
            )
        )
    headers = ["LSTM setting", "mean log_loss", "mean accuracy", "worst acc short of first"]
    headers += ["mean events/s", "streams"]
    return render_table(headers, [row for _, row in sorted(rows, key=lambda pair: pair[0])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events of each generated stream")
    parser.add_argument("--seeds", default="0", help="seeds of the generated streams, comma-separated")
    parser.add_argument("--models", default=",".join(DEFAULTS["models"]))
    parser.add_argument("--streams", default=",".join(["elec2", *SUITE]))
    parser.add_argument(
        "--variants",
        default=VARIANTS,
        help='LSTM settings to compare, e.g. "batch=1,steps=1,extra=0;steps=2" (the first is the reference)',
    )
    parser.add_argument("--markdown", help="append the tables to this Markdown file")
    args = parser.parse_args()
    set_cpu_threads(1)  # evaluate's default (torch_threads)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    chosen = streams(
        [name.strip() for name in args.streams.split(",") if name.strip()],
        args.events,
        [int(seed) for seed in args.seeds.split(",") if seed.strip()],
    )
    machine = f"Machine: {describe_machine()}"
    print(machine, flush=True)
    batch = DEFAULTS["batch_size"]
    results = []
    for stream in chosen:
        print(f"  {stream.name}: {', '.join(models)} at batch {batch} ...", flush=True)
        results.append((stream, evaluate(stream, models, batch=batch, lstm={})))
    sections = [
        f"Quality at the default settings (batch {batch}, lr {DEFAULTS['learning_rate']}, "
        f"lr boost half-life {DEFAULTS['lr_boost_half_life']:g} steps, "
        f"{DEFAULTS['steps_per_batch']} steps per batch (one more in the first"
        f" {DEFAULTS['extra_step_events']:,} labelled events), {DEFAULTS['trend_scales']} trend scales, "
        f"stream rate half-life {DEFAULTS['stream_rate_half_life']:g}); best: the oracle's expected scores "
        f"(stream_lstm.offline.families)\n\n{quality_table(results)}"
    ]
    print("\n" + sections[-1] + "\n", flush=True)
    calibration = []
    if "lstm" in models and "logreg" in models:
        default_label = parse_variant("")[0]
        calibration = [(stream, default_label, run) for stream, run in results]
    if args.variants:
        compared = []
        for stream in chosen:
            for text in filter(None, (v.strip() for v in args.variants.split(";"))):
                label, size, lstm = parse_variant(text)
                # At another batch size logreg runs too, for the calibration table.
                names = ["lstm"] if size == batch else ["lstm", "logreg"]
                print(f"  {stream.name}: {', '.join(names)}, {label} ...", flush=True)
                run = evaluate(stream, names, batch=size, lstm=lstm)
                compared.append((stream, label, run))
                if size != batch:
                    calibration.append((stream, label, run))
        sections.append(f"The LSTM alone under other settings\n\n{variants_table(compared)}")
        print("\n" + sections[-1] + "\n", flush=True)
        sections.append(f"The settings by their mean over the streams\n\n{choice_table(compared)}")
        print("\n" + sections[-1] + "\n", flush=True)
    if calibration:
        sections.append(
            "Calibration: the LSTM beside logreg at the same batch size (holds: where the LSTM's"
            f" accuracy is the higher, its log loss is not)\n\n{calibration_table(calibration)}"
        )
        print("\n" + sections[-1] + "\n", flush=True)
    if args.markdown:
        append_results(args.markdown, "quality benchmark", machine, sections)


if __name__ == "__main__":
    main()
