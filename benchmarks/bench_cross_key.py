"""Where per-event learning's lead on the seasonal stream comes from: what other keys just showed.

On ``seasonal_keyed`` (:func:`stream_lstm.offline.families.seasonal`, 20 keys) the label follows
the time of day, which no input shows. Each key's own history shows it roughly (a key has about
25 events a day); the stream as a whole shows it 20 times as often. A learner that updates its
weights after every event (batch 1) can carry what the last events of all keys showed in its
weights; at batch 64 a prediction uses weights from before its batch, and a key's state holds
only that key's events. Three runs tell the explanations apart, each at batch 64 (the defaults)
and at batch 1:

* the suite's stream as it is;
* the same events with one more feature, ``stream_rate``: an exponential moving average of the
  labels of all earlier events of the stream (every key), the information batch 1 can keep in its
  weights and batch 64 cannot; prequential (an event's value uses only earlier labels), and
  ``logreg_lags`` gets it too;
* the stream with one key (``n_keys=1``): every event is in the key's own history.

If batch 64 with ``stream_rate`` is about as good as batch 1, the lead is information across keys,
not learning speed. Usage: ``python benchmarks/bench_cross_key.py [--events 20000] [--seeds 0,1]
[--half-life 14] [--markdown OUT.md]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from bench_quality import DEFAULTS, Stream, evaluate
from machine import append_results, describe_machine

from stream_lstm.evaluation.report import render_table
from stream_lstm.learner.cpu_threads import set_cpu_threads
from stream_lstm.messages.events import Event
from stream_lstm.offline.families import SUITE, seasonal, suite_stream

MODELS = ["lstm", "logreg_lags"]


def with_stream_rate(events: list[Event], half_life: float) -> list[Event]:
    """``events`` with the feature ``stream_rate``: the moving average (``half_life`` events) of
    every earlier event's label, 0.5 before the first; an unlabelled event leaves it as it is."""
    alpha = 1.0 - 0.5 ** (1.0 / half_life)
    rate, out = 0.5, []
    for event in events:
        out.append(dataclasses.replace(event, features={**event.features, "stream_rate": rate}))
        if event.label is not None:
            rate += alpha * (event.label - rate)
    return out


def streams(n_events: int, seeds: list[int], half_life: float) -> list[Stream]:
    """Per seed: the suite's ``seasonal_keyed``, it with ``stream_rate``, and seasonal with one key."""
    options = SUITE["seasonal_keyed"][1]
    chosen = []
    for seed in seeds:
        keyed = suite_stream("seasonal_keyed", n_events, seed)
        single = seasonal(n_events, **{**options, "n_keys": 1}, seed=seed)
        chosen += [
            Stream(f"seasonal_keyed/{seed}", keyed.events, keyed.best_accuracy, keyed.best_log_loss),
            Stream(
                f"seasonal_keyed + stream_rate/{seed}",
                with_stream_rate(keyed.events, half_life),
                keyed.best_accuracy,
                keyed.best_log_loss,
            ),
            Stream(f"seasonal, one key/{seed}", single.events, single.best_accuracy, single.best_log_loss),
        ]
    return chosen


def lead_table(results: list[tuple[Stream, dict[int, dict]]]) -> str:
    """Per stream and model: accuracy and log loss at batch 64 and at batch 1, and batch 1's lead."""
    headers = ["stream", "best acc", "model", "acc b64", "acc b1", "b1 lead (points)", "ll b64", "ll b1"]
    rows = []
    for stream, by_batch in results:
        batched, single = by_batch[DEFAULTS["batch_size"]], by_batch[1]
        for model in MODELS:
            a, b = batched["models"][model], single["models"][model]
            rows.append(
                [
                    stream.name,
                    "-" if math.isnan(stream.best_accuracy) else f"{stream.best_accuracy:.4f}",
                    model,
                    f"{a['accuracy']:.4f}",
                    f"{b['accuracy']:.4f}",
                    f"{100 * (b['accuracy'] - a['accuracy']):+.1f}",
                    f"{a['log_loss']:.4f}",
                    f"{b['log_loss']:.4f}",
                ]
            )
    return render_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seeds", default="0,1", help="seeds, comma-separated")
    parser.add_argument("--half-life", type=float, default=14.0, help="of stream_rate, in events")
    parser.add_argument("--markdown", help="append the table to this Markdown file")
    args = parser.parse_args()
    set_cpu_threads(1)  # evaluate's default (torch_threads)
    machine = f"Machine: {describe_machine()}"
    print(machine, flush=True)
    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    results = []
    for stream in streams(args.events, seeds, args.half_life):
        by_batch = {}
        for batch, lstm in ((DEFAULTS["batch_size"], {}), (1, {"steps_per_batch": 1})):
            print(f"  {stream.name}: batch {batch} ...", flush=True)
            by_batch[batch] = evaluate(stream, MODELS, batch=batch, lstm=lstm)
        results.append((stream, by_batch))
    section = (
        f"Batch 64 (the defaults) against batch 1 (1 step per batch), with stream_rate of half-life "
        f"{args.half_life:g} events\n\n{lead_table(results)}"
    )
    print("\n" + section + "\n", flush=True)
    if args.markdown:
        append_results(args.markdown, "where per-event learning's lead comes from", machine, [section])


if __name__ == "__main__":
    main()
