"""What an evaluation produced, and how two evaluations of the same events are reported as one.

The models never read each other's predictions, so they can be evaluated apart on the same
events: ``stream-lstm evaluate`` runs the baselines in a second process
(:mod:`stream_lstm.offline.side_lane`) while its own process runs the LSTM, whose probabilities
the second process scores. Each evaluator hands over its :class:`EvaluationResults`;
:func:`combine_results` puts two of them side by side, as if one evaluator had run every model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_lstm.errors import EvaluationError
from stream_lstm.evaluation.scores import Scorer


@dataclass(frozen=True, eq=False)
class EvaluationResults:
    """Counts, and per model: scores, seconds, per-event correctness and guard counts."""

    #: Events and labelled events seen (the same for every model).
    events: int
    labelled: int
    #: Size of the rolling window of the scores.
    window: int
    scores: dict[str, Scorer]
    #: Each model's own predict and learn time (a model run in another process has none here).
    seconds: dict[str, float]
    #: Each model's per-event correctness, batch by batch (empty unless traces were kept).
    trace: dict[str, list[np.ndarray]]
    #: What the guards of the models that have guards left out (see ``GuardedModel``).
    guards: dict[str, dict[str, int]]
    #: The event count at which a model began (one added to a resumed evaluator); 0 if absent.
    started_at: dict[str, int] = field(default_factory=dict)

    def guard_stats(self) -> dict[str, dict[str, int]]:
        """What each guarded model left out, by reason, as ``PrequentialEvaluator.guard_stats``."""
        return dict(self.guards)

    def report(self) -> dict[str, dict[str, Any]]:
        """Per model: whole-stream scores, rolling scores and the model's own events/s."""
        return model_reports(self.scores, self.seconds, self.events, self.started_at)

    def rolling_accuracy_curve(self, name: str) -> np.ndarray:
        """Rolling accuracy of model ``name`` after each labelled event (needs kept traces)."""
        return rolling_accuracy(self.trace[name], self.window)


def model_reports(
    scores: Mapping[str, Scorer],
    seconds: Mapping[str, float],
    events: int,
    started_at: Mapping[str, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per model: whole-stream scores, rolling scores and the events it ran per second of its
    own time (``events``, less those before it began: ``started_at``; NaN for a model whose
    time is not in ``seconds``, one run in another process)."""
    report = {}
    for name, scorer in scores.items():
        spent = seconds.get(name, 0.0)
        ran = events - (started_at or {}).get(name, 0)
        report[name] = {
            **scorer.whole(),
            "rolling": scorer.rolling(),
            "events_per_second": ran / spent if spent > 0 else math.nan,
        }
    return report


def rolling_accuracy(trace: Sequence[np.ndarray], window: int) -> np.ndarray:
    """Accuracy over the latest ``window`` labelled events, after each labelled event of ``trace``."""
    if not trace:
        return np.zeros(0)
    correct = np.concatenate(trace).astype(np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(correct)])
    n = np.arange(1, correct.size + 1)
    start = np.maximum(n - window, 0)
    return (cumulative[n] - cumulative[start]) / (n - start)


def combine_results(
    mine: EvaluationResults, theirs: EvaluationResults, order: Sequence[str] = ()
) -> EvaluationResults:
    """The models of two evaluations of the same events, reported together.

    A model may be run by one and scored by the other (``scored_elsewhere`` and ``outside`` of
    :class:`~stream_lstm.evaluation.prequential.PrequentialEvaluator`): its scores, trace and
    start then come from the one that scores it, its seconds and guard counts from the one that
    runs it. ``order`` lists model names in the order the report should show them (names not in it
    come last). Raises :class:`EvaluationError` when the two saw different events, or both score
    or both run a model.
    """
    if (theirs.events, theirs.labelled) != (mine.events, mine.labelled):
        raise EvaluationError(
            f"the two evaluations saw different events ({mine.events:,} events, "
            f"{mine.labelled:,} labelled here; {theirs.events:,} and "
            f"{theirs.labelled:,} there): did the file change while it was read? "
            "(--parallel false reads it once)"
        )
    clash = (set(theirs.scores) & set(mine.scores)) | (set(theirs.seconds) & set(mine.seconds))
    if clash:
        raise EvaluationError(f"model(s) {', '.join(sorted(clash))} were evaluated twice")
    rank = {name: i for i, name in enumerate(order)}

    def ordered(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, Any]:
        merged = {**first, **second}
        return {name: merged[name] for name in sorted(merged, key=lambda n: rank.get(n, len(rank)))}

    return EvaluationResults(
        events=mine.events,
        labelled=mine.labelled,
        window=mine.window,
        scores=ordered(mine.scores, theirs.scores),
        seconds=ordered(mine.seconds, theirs.seconds),
        trace=ordered(mine.trace, theirs.trace),
        guards={**mine.guards, **theirs.guards},
        started_at={**mine.started_at, **theirs.started_at},
    )
