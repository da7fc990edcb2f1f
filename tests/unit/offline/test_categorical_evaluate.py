"""Categories learned end to end: a CSV stream whose label depends only on a text column.

`evaluate --categorical colour` must let both the LSTM and logreg beat the base rate measured on
the same file by a clear margin; `--ignore colour` (the same file without the category) must not.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from stream_lstm.cli.main import main

#: P(label = 1) of each colour: the label depends on nothing else.
COLOUR_RATE = {"red": 0.9, "green": 0.1, "blue": 0.8, "grey": 0.2, "pink": 0.5}


def colour_stream(path: Path, rows: int, seed: int) -> float:
    """Write the stream; return its share of label 1 (the base rate)."""
    rng = random.Random(seed)
    positives = 0
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "colour", "noise", "label"])
        for i in range(rows):
            colour = rng.choice(list(COLOUR_RATE))
            label = int(rng.random() < COLOUR_RATE[colour])
            positives += label
            writer.writerow([f"k{i % 20}", colour, f"{rng.gauss(0, 1):.4f}", label])
    return positives / rows


def accuracies(path: Path, report: Path, *options: str) -> dict[str, float]:
    argv = ["evaluate", str(path), "--label", "label", "--key", "key", "--models", "lstm,logreg"]
    argv += ["--batch-size", "16", "--hidden-size", "8", "--device", "cpu", "--no-progress"]
    assert main([*argv, *options, "--json", str(report)]) == 0
    return {name: scores["accuracy"] for name, scores in json.loads(report.read_text())["models"].items()}


def test_a_label_that_depends_on_a_category_is_learned(tmp_path: Path) -> None:
    path = tmp_path / "colours.csv"
    base = colour_stream(path, 4000, seed=2)
    chance = max(base, 1 - base)
    learned = accuracies(path, tmp_path / "with.json", "--categorical", "colour")
    blind = accuracies(path, tmp_path / "without.json", "--ignore", "colour")
    # The best possible accuracy here is 0.78 (each colour's majority label); chance is about 0.5.
    for name in ("lstm", "logreg"):
        assert learned[name] > chance + 0.15, (name, learned, chance)
        assert blind[name] < chance + 0.05, (name, blind, chance)
