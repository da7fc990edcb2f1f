"""Presenting evaluation results: a text table, a JSON file and a rolling-accuracy plot.

The plot needs matplotlib, which is the ``plot`` extra (``pip install 'stream-lstm[plot]'``), not
a dependency of the package: :func:`require_plotting` refuses a plot before any work is done.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stream_lstm.errors import ConfigError
from stream_lstm.evaluation.scores import METRICS

#: What to do when matplotlib is missing: the extra that brings it.
PLOT_EXTRA_HINT = "pip install 'stream-lstm[plot]'"


def format_table(models: Mapping[str, Mapping[str, Any]], *, window: int) -> str:
    """One row per model: whole-stream metrics, rolling accuracy and the model's events/s."""
    headers = ["model", *METRICS, f"rolling_acc@{window}", "events/s"]
    rows = []
    for name, scores in models.items():
        rows.append(
            [
                name,
                *(_number(scores[metric]) for metric in METRICS),
                _number(scores["rolling"]["accuracy"]),
                _number(scores["events_per_second"], digits=0),
            ]
        )
    return render_table(headers, rows)


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(row) for row in rows)])


def _number(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def json_ready(value: Any) -> Any:
    """Replace NaN and infinities (which JSON lacks) by ``None``, recursively; numpy to Python."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, report: Mapping[str, Any]) -> None:
    """Write the report as indented JSON (NaN as null)."""
    Path(path).write_text(json.dumps(json_ready(report), indent=2) + "\n")


def require_plotting() -> None:
    """Raise :class:`ConfigError` naming the ``plot`` extra when matplotlib cannot be imported.

    Call it before an evaluation that ends in a plot, so that a missing extra is said at once
    rather than after the whole stream has been read.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"--plot needs matplotlib, which is not installed: {PLOT_EXTRA_HINT}") from error


def plot_rolling_accuracy(
    curves: Mapping[str, np.ndarray], path: str | Path, *, window: int, title: str
) -> None:
    """Save a PNG with each model's rolling accuracy against the labelled events seen.

    Raises :class:`ConfigError` without matplotlib (see :func:`require_plotting`).
    """
    require_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 4.5), dpi=110)
    for name, curve in curves.items():
        if curve.size:
            axes.plot(np.arange(1, curve.size + 1), curve, label=name, linewidth=1.2)
    axes.set_xlabel("labelled events")
    axes.set_ylabel(f"accuracy over the last {window:,} events")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
