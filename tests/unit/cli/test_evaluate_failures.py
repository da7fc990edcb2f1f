"""`stream-lstm evaluate` fails loudly on a file it cannot use, and says which option to pass.

Each case a new user met: a forgotten --key, a text column, yes/no labels, four classes, a
header-only file, a file without labels. Each ends with its exit status (1: the data failed the
checks, 2: a usage error), the first reasons and the hint; the right option then makes it pass.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from stream_lstm.cli.main import main
from stream_lstm.offline.generator import temporal_stream, write_csv

FAST = ["--models", "logreg,no_change", "--no-progress", "--batch-size", "16"]


@pytest.fixture
def stream_csv(tmp_path: Path) -> Path:
    path = tmp_path / "stream.csv"
    write_csv(temporal_stream(400, n_keys=5, seed=4), path)
    return path


def rewritten(path: Path, change: Callable[[dict[str, str], random.Random], dict[str, str]]) -> Path:
    """A copy of the CSV file with every row passed through ``change``."""
    rng = random.Random(1)
    with path.open(newline="") as handle:
        rows = [change(row, rng) for row in csv.DictReader(handle)]
    out = path.with_name(f"changed-{path.name}")
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def evaluate(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    status = main(["evaluate", *argv, *FAST])
    out, err = capsys.readouterr()
    return status, out, err


def test_a_forgotten_key_fails_and_names_the_option(stream_csv: Path, capsys: pytest.CaptureFixture) -> None:
    status, out, err = evaluate(capsys, str(stream_csv), "--label", "label")
    assert status == 1
    assert "no row could be read: every row was skipped" in err
    assert "line 2: column 'key' is text" in err
    assert "hint: column 'key' is text (400 rows): pass --key key if it names the entity" in err
    assert "\033" not in err  # no terminal escape codes where stderr is not a terminal
    assert "accuracy" not in out  # no table of n/a
    assert evaluate(capsys, str(stream_csv), "--label", "label", "--key", "key")[0] == 0
    assert evaluate(capsys, str(stream_csv), "--label", "label", "--ignore", "key")[0] == 0


def test_a_text_column_is_a_category_only_when_declared(
    stream_csv: Path, capsys: pytest.CaptureFixture
) -> None:
    with_city = rewritten(stream_csv, lambda row, rng: {**row, "city": rng.choice(["Paris", "Lyon"])})
    status, _, err = evaluate(capsys, str(with_city), "--label", "label", "--key", "key")
    assert status == 1
    assert "--categorical city if it is a category" in err
    status, out, _ = evaluate(
        capsys, str(with_city), "--label", "label", "--key", "key", "--categorical", "city"
    )
    assert status == 0 and "0 bad rows skipped" in out


def test_yes_no_labels_need_the_positive_value(stream_csv: Path, capsys: pytest.CaptureFixture) -> None:
    yes_no = rewritten(stream_csv, lambda row, rng: {**row, "label": "yes" if row["label"] == "1" else "no"})
    status, _, err = evaluate(capsys, str(yes_no), "--label", "label", "--key", "key")
    assert status == 1
    assert "hint: labels are {no, yes}, not 0/1 or true/false: pass --positive-label VALUE" in err
    status, out, _ = evaluate(
        capsys, str(yes_no), "--label", "label", "--key", "key", "--positive-label", "yes"
    )
    assert status == 0 and "400 events (400 labelled, 0 bad rows skipped)" in out


def test_four_classes_are_not_half_dropped_in_silence(
    stream_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    classes = rewritten(stream_csv, lambda row, rng: {**row, "label": str(rng.randrange(4))})
    report = tmp_path / "r.json"
    status, out, err = evaluate(
        capsys, str(classes), "--label", "label", "--key", "key", "--json", str(report)
    )
    assert status == 1
    assert "rows were skipped" in err and "more than --max-skipped 5% allows" in err
    assert "labels are {0, 1, 2, 3}" in err
    assert "accuracy" in out  # the rows that were read are still scored and shown
    skipped = json.loads(report.read_text())["skipped"]
    assert 100 < skipped < 300
    status, out, _ = evaluate(
        capsys, str(classes), "--label", "label", "--key", "key", "--positive-label", "3"
    )
    assert status == 0 and "400 labelled" in out
    # A stated share of bad rows is allowed.
    assert evaluate(capsys, str(classes), "--label", "label", "--key", "key", "--max-skipped", "0.9")[0] == 0


def test_a_header_only_file_is_an_error_and_writes_no_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("key,ts,label,a\n")
    plot = tmp_path / "plot.png"
    status, _, err = evaluate(capsys, str(path), "--label", "label", "--key", "key", "--plot", str(plot))
    assert status == 2
    assert "has no rows below its header: nothing to evaluate" in err
    assert not plot.exists()


def test_a_file_without_labels_fails(stream_csv: Path, capsys: pytest.CaptureFixture) -> None:
    unlabelled = rewritten(stream_csv, lambda row, rng: {**row, "label": ""})
    status, _, err = evaluate(capsys, str(unlabelled), "--label", "label", "--key", "key")
    assert status == 1
    assert "no row has a label in column 'label': nothing was scored" in err


def test_features_and_ignore_name_existing_columns(stream_csv: Path, capsys: pytest.CaptureFixture) -> None:
    assert evaluate(capsys, str(stream_csv), "--label", "label", "--key", "key", "--features", "a,b")[0] == 0
    status, _, err = evaluate(
        capsys, str(stream_csv), "--label", "label", "--key", "key", "--ignore", "colour"
    )
    assert status == 2
    assert "--ignore names 'colour', not in" in err and "its columns are: key, ts, label, a, b, c" in err
