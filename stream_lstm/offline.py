"""The work of ``stream-lstm evaluate``: stream a CSV file through the models, test-then-train."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from stream_lstm.csv_source import CsvEventSource
from stream_lstm.evaluation import PrequentialEvaluator
from stream_lstm.events import Event
from stream_lstm.progress import ProgressLine


def batches(events: Iterable[Event], size: int) -> Iterable[list[Event]]:
    """Consecutive micro-batches of ``size`` events (the last one may be shorter)."""
    batch: list[Event] = []
    for event in events:
        batch.append(event)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate_stream(
    events: Iterable[Event],
    evaluator: PrequentialEvaluator,
    *,
    batch_size: int,
    progress: ProgressLine | None = None,
) -> float:
    """Run every event through ``evaluator`` in micro-batches; return the seconds it took."""
    started = time.perf_counter()
    for batch in batches(events, batch_size):
        evaluator.process(batch)
        if progress is not None:
            progress.update(evaluator.events, lambda: _status(evaluator))
    seconds = time.perf_counter() - started
    if progress is not None:
        progress.update(evaluator.events, lambda: _status(evaluator), force=True)
        progress.close()
    return seconds


def _status(evaluator: PrequentialEvaluator) -> str:
    parts = []
    for name, scorer in evaluator.scores.items():
        accuracy = scorer.rolling()["accuracy"]
        parts.append(f"{name} {accuracy:.3f}" if accuracy == accuracy else f"{name} n/a")
    return "rolling acc: " + "  ".join(parts)


def evaluation_report(
    source: CsvEventSource,
    evaluator: PrequentialEvaluator,
    *,
    seconds: float,
    batch_size: int,
    learner: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON report of an evaluation run."""
    events = evaluator.events
    return {
        "file": str(source.path),
        "events": events,
        "labelled": evaluator.labelled,
        "skipped": source.skipped,
        "bad_rows": [asdict(bad) for bad in source.bad_rows[:100]],
        "seconds": seconds,
        "events_per_second": events / seconds if seconds > 0 else None,
        "batch_size": batch_size,
        "window": evaluator.window,
        "models": evaluator.report(),
        "lstm": learner,
    }
