"""The work of ``stream-lstm evaluate``: stream a CSV file through the models, test-then-train.

:func:`evaluate_stream` runs the events through an evaluator in micro-batches, with the baselines
and their mixture optionally in a second process
(:class:`~stream_lstm.offline.side_lane.SideLane`), whose results it reports beside this
process's. That process can score this one's models too, from the probabilities sent to it: this
process then only runs them (``stream-lstm evaluate`` does so for the LSTM).
:func:`evaluation_report` makes the JSON report of the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, NamedTuple

from stream_lstm.errors import ConfigError
from stream_lstm.evaluation.outside import labelled_mask, labelled_probabilities
from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.evaluation.results import EvaluationResults, combine_results
from stream_lstm.evaluation.scores import Scorer
from stream_lstm.messages.events import Event
from stream_lstm.offline.batches import batches
from stream_lstm.offline.csv_source import CsvEventSource
from stream_lstm.offline.csv_source import CsvSpec as CsvSpec
from stream_lstm.offline.side_lane import SideLane
from stream_lstm.telemetry.progress import ProgressLine

# CsvSpec (now in offline.csv_source) and batches (offline.batches) are imported from here too.

log = logging.getLogger(__name__)


class StreamEvaluation(NamedTuple):
    """What :func:`evaluate_stream` returns."""

    #: Wall-clock seconds of the whole run (waiting for a side lane's results included).
    seconds: float
    #: Every model's results: this process's and, with a side lane, the second process's.
    results: EvaluationResults


def evaluate_stream(
    events: Iterable[Event],
    evaluator: PrequentialEvaluator,
    *,
    batch_size: int,
    progress: ProgressLine | None = None,
    side_lane: SideLane | None = None,
    order: Sequence[str] = (),
) -> StreamEvaluation:
    """Run every event through ``evaluator`` in micro-batches; return the seconds and results.

    With a ``side_lane`` (started on the same events), its models' results are reported beside
    ``evaluator``'s, in ``order``, and the time includes waiting for them; the clock starts once the
    side lane is ready, which then begins reading events (:meth:`SideLane.begin`). When the side
    lane scores models of ``evaluator`` (:attr:`SideLane.elsewhere`; ``evaluator`` then scores
    nothing: ``scored_elsewhere``), their probabilities of each batch's labelled events are sent
    to it as they are predicted.
    """
    sent = side_lane.elsewhere if side_lane is not None else ()
    _check_who_scores(evaluator, sent)
    if side_lane is not None:
        side_lane.wait_until_ready()  # its start-up is no more counted than this process's
    started = time.perf_counter()
    if side_lane is not None:
        side_lane.begin()
    for count, batch in enumerate(batches(events, batch_size)):
        predictions = evaluator.process(batch)
        if side_lane is not None:
            if sent:
                labelled = labelled_mask([event.label for event in batch])
                side_lane.send_probabilities(labelled_probabilities(predictions, sent, labelled))
            if count % 256 == 0:
                side_lane.check()
        if progress is not None:
            progress.update(evaluator.events, lambda: _status(evaluator.scores, side_lane))
    if side_lane is not None:
        theirs = side_lane.results()
        results = combine_results(evaluator.results(), theirs, order)  # refuses other events
    else:
        results = evaluator.results()
    seconds = time.perf_counter() - started
    if progress is not None:
        progress.update(results.events, lambda: _status(results.scores, None), force=True)
        progress.close()
    warn_about_guards(results)
    return StreamEvaluation(seconds, results)


def _check_who_scores(evaluator: PrequentialEvaluator, sent: Sequence[str]) -> None:
    """Refuse a split in which a model would be scored twice, or not at all: the side lane scores
    the models ``sent`` to it, ``evaluator`` the others of its own, unless it scores nothing."""
    if evaluator.outside:
        raise ConfigError(
            "models of two processes are scored in the side lane (SideLane(elsewhere=...)), not in "
            "the evaluator of the first"
        )
    missing = [name for name in sent if name not in evaluator.models]
    if missing:
        raise ConfigError(f"the side lane scores {', '.join(missing)}, which the evaluator does not run")
    twice = [name for name in sent if name in evaluator.scores]
    if twice:
        raise ConfigError(
            f"{', '.join(twice)} would be scored in both processes: the evaluator of the first scores "
            "nothing (scored_elsewhere) when the side lane scores its models"
        )
    unscored = [name for name in evaluator.models if name not in sent] if evaluator.scored_elsewhere else []
    if unscored:
        raise ConfigError(
            f"nothing would score {', '.join(unscored)}: the side lane scores only what it is sent"
        )


def warn_about_guards(results: EvaluationResults) -> None:
    """Log a warning for each model that skipped updates (a non-finite loss or gradient), with
    the counts by reason; dropped feature values (names past ``max_features``) are logged as info."""
    for name, stats in results.guard_stats().items():
        skipped = {
            reason.removeprefix("skipped_"): count
            for reason, count in stats.items()
            if reason.startswith("skipped_") and count
        }
        if skipped:
            counts = ", ".join(f"{reason}: {count:,}" for reason, count in skipped.items())
            log.warning(
                "%s skipped %s update(s) whose loss or gradient was not finite (%s)",
                name,
                f"{sum(skipped.values()):,}",
                counts,
            )
        dropped = stats.get("features_dropped", 0)
        if dropped:
            log.info("%s dropped %s value(s) of features past max_features", name, f"{dropped:,}")


def _status(scores: Mapping[str, Scorer], side_lane: SideLane | None) -> str:
    """The progress line's scores: the rolling accuracy of the models scored here, or, when the
    second process scores every model, that their scores come at the end."""
    if not scores and side_lane is not None:
        return "scores at the end (second process)"
    parts = []
    for name, scorer in scores.items():
        accuracy = scorer.rolling()["accuracy"]
        parts.append(f"{name} {accuracy:.3f}" if accuracy == accuracy else f"{name} n/a")
    if side_lane is not None:  # their scores arrive at the end
        parts.append(f"({', '.join(side_lane.names)}: in a second process)")
    return "rolling acc: " + "  ".join(parts)


def evaluation_report(
    source: CsvEventSource,
    results: EvaluationResults,
    *,
    seconds: float,
    batch_size: int,
    learner: dict[str, Any] | None,
    processes: int = 1,
) -> dict[str, Any]:
    """The JSON report of an evaluation run (``processes``: 2 when a :class:`SideLane` ran)."""
    events = results.events
    return {
        "file": str(source.path),
        "events": events,
        "labelled": results.labelled,
        "skipped": source.skipped,
        "bad_rows": [asdict(bad) for bad in source.bad_rows[:100]],
        "seconds": seconds,
        "events_per_second": events / seconds if seconds > 0 else None,
        "batch_size": batch_size,
        "processes": processes,
        "window": results.window,
        "models": results.report(),
        "guards": results.guard_stats(),
        "lstm": learner,
    }
