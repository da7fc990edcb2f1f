"""Where per-event learning's lead on the seasonal stream comes from: what other keys just showed.

On ``seasonal_keyed`` (:func:`stream_lstm.offline.families.seasonal`, 20 keys) the label follows
the time of day, which no input shows. Each key's own history shows it roughly (a key has about
25 events a day); the stream as a whole shows it 20 times as often. A learner that updates its
weights after every event (batch 1) can carry what the last events of all keys showed in its
weights; at batch 64 a prediction uses weights from before its batch, and a key's state holds
only that key's events. The stream rate (:mod:`stream_lstm.messages.stream_rate`, the moving
average of all keys' earlier labels) gives a prediction that information. Three runs, each at
batch 64 (the defaults) and at batch 1:

* the suite's stream without the stream rate (``stream_rate_half_life=0``, the defaults before it);
* the same with it (the defaults);
* the stream with one key (``n_keys=1``): every event is in the key's own history.

If batch 64 with the stream rate is about as good as batch 1, the lead was information across
keys, not learning speed. Usage: ``python benchmarks/bench_cross_key.py [--events 20000]
[--seeds 0,1] [--markdown OUT.md]``.
"""

from __future__ import annotations

import argparse
import math

from bench_quality import DEFAULTS, Stream, evaluate
from machine import append_results, describe_machine

from stream_lstm.evaluation.report import render_table
from stream_lstm.learner.cpu_threads import set_cpu_threads
from stream_lstm.offline.families import SUITE, seasonal, suite_stream

MODELS = ["lstm", "logreg_lags"]


def streams(n_events: int, seeds: list[int]) -> list[tuple[Stream, dict[str, float]]]:
    """Per seed: the suite's ``seasonal_keyed`` without and with the stream rate, and seasonal
    with one key; each with the settings it runs under."""
    options = SUITE["seasonal_keyed"][1]
    chosen = []
    for seed in seeds:
        keyed = suite_stream("seasonal_keyed", n_events, seed)
        single = seasonal(n_events, **{**options, "n_keys": 1}, seed=seed)
        best = (keyed.best_accuracy, keyed.best_log_loss)
        chosen += [
            (
                Stream(f"seasonal_keyed, no stream rate/{seed}", keyed.events, *best),
                {"stream_rate_half_life": 0},
            ),
            (Stream(f"seasonal_keyed/{seed}", keyed.events, *best), {}),
            (
                Stream(
                    f"seasonal, one key/{seed}", single.events, single.best_accuracy, single.best_log_loss
                ),
                {},
            ),
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
    parser.add_argument("--markdown", help="append the table to this Markdown file")
    args = parser.parse_args()
    set_cpu_threads(1)  # evaluate's default (torch_threads)
    machine = f"Machine: {describe_machine()}"
    print(machine, flush=True)
    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    results = []
    for stream, settings in streams(args.events, seeds):
        by_batch = {}
        for batch, lstm in (
            (DEFAULTS["batch_size"], {}),
            (1, {"steps_per_batch": 1, "extra_step_events": 0}),
        ):
            print(f"  {stream.name}: batch {batch} ...", flush=True)
            by_batch[batch] = evaluate(stream, MODELS, batch=batch, lstm={**settings, **lstm})
        results.append((stream, by_batch))
    section = (
        "Batch 64 (the defaults) against batch 1 (1 step per batch), without and with the stream "
        f"rate (half-life {DEFAULTS['stream_rate_half_life']:g} events)\n\n{lead_table(results)}"
    )
    print("\n" + section + "\n", flush=True)
    if args.markdown:
        append_results(args.markdown, "where per-event learning's lead comes from", machine, [section])


if __name__ == "__main__":
    main()
