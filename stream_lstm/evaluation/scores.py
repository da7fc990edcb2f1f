"""Prequential scores of one model: accuracy, log loss, ROC AUC and kappa-temporal.

:class:`Scorer` keeps them over the whole stream and over a rolling window of the latest labelled
events; the functions compute one score each from arrays of labels and probabilities.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stream_lstm.errors import ConfigError
from stream_lstm.models.state_data import Fields, State, damaged

METRICS = ("accuracy", "log_loss", "roc_auc", "kappa_temporal")

#: Probabilities are clipped to [EPS, 1 - EPS] for the log loss, so a confident miss costs ~34.5.
EPS = 1e-15


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC with ties counted as half (the Mann-Whitney statistic); NaN with one class.

    >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0 or np.isnan(scores).any():
        return math.nan
    ranks = average_ranks(scores)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing their average rank (``scipy.stats.rankdata``'s
    default), without importing scipy.stats (half a second, in a process that does not import river).

    >>> average_ranks(np.array([0.3, 0.1, 0.3, 0.2])).tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first_of_tie = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    starts = np.flatnonzero(first_of_tie)
    ends = np.append(starts[1:], values.size)
    ranks = np.empty(values.size)
    ranks[order] = ((starts + 1 + ends) / 2.0)[np.cumsum(first_of_tie) - 1]
    return ranks


def log_loss_terms(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per-event log loss with probabilities clipped to ``[EPS, 1 - EPS]``."""
    p = np.clip(probabilities, EPS, 1 - EPS)
    return -(labels * np.log(p) + (1 - labels) * np.log1p(-p))


def kappa_temporal(accuracy: float, no_change_accuracy: float) -> float:
    """Agreement beyond the no-change classifier (Zliobaite et al. 2015); NaN if that is perfect.

    >>> kappa_temporal(0.9, 0.8)
    0.5
    """
    if not no_change_accuracy < 1:
        return math.nan
    return (accuracy - no_change_accuracy) / (1 - no_change_accuracy)


class Scorer:
    """Prequential scores of one model, over the whole stream and a rolling window.

    The whole-stream ROC AUC counts probabilities in ``auc_bins`` equal bins (exact up to that
    resolution, constant memory); the rolling one is exact over the window.

    Parameters
    ----------
    window
        How many of the latest labelled events the rolling scores cover.
    auc_bins
        Resolution of the whole-stream ROC AUC.
    """

    def __init__(self, *, window: int = 1000, auc_bins: int = 10_000) -> None:
        if window < 1:
            raise ConfigError(f"window must be at least 1, got {window}")
        self.window = window
        self.auc_bins = auc_bins
        self.count = 0
        self.correct = 0
        self.log_loss_sum = 0.0
        self.reference_correct = 0
        self.positive_bins = np.zeros(auc_bins, dtype=np.int64)
        self.negative_bins = np.zeros(auc_bins, dtype=np.int64)
        self._labels = np.zeros(window, dtype=np.int8)
        self._probabilities = np.zeros(window)
        self._reference = np.zeros(window, dtype=bool)
        self._next = 0  # ring-buffer position of the next event

    def update(self, labels: np.ndarray, probabilities: np.ndarray, reference_correct: np.ndarray) -> None:
        """Score labelled events; ``reference_correct`` says where no-change was right on them."""
        if labels.size == 0:
            return
        if labels.size == 1:  # strict per-event learning: plain floats beat a dozen array ops
            self._update_one(int(labels[0]), float(probabilities[0]), bool(reference_correct[0]))
            return
        correct = (probabilities >= 0.5) == (labels == 1)
        self.count += labels.size
        self.correct += int(correct.sum())
        self.log_loss_sum += float(log_loss_terms(labels, probabilities).sum())
        self.reference_correct += int(reference_correct.sum())
        bins = np.minimum((probabilities * self.auc_bins).astype(np.int64), self.auc_bins - 1)
        # add.at touches only the bins hit: far cheaper than a full bincount for small batches.
        np.add.at(self.positive_bins, bins[labels == 1], 1)
        np.add.at(self.negative_bins, bins[labels == 0], 1)
        tail = slice(-self.window, None)  # only the newest `window` events can stay in the buffer
        positions = (self._next + np.arange(labels.size)[tail]) % self.window
        self._labels[positions] = labels[tail]
        self._probabilities[positions] = probabilities[tail]
        self._reference[positions] = reference_correct[tail]
        self._next = (self._next + labels.size) % self.window

    def _update_one(self, label: int, probability: float, reference_correct: bool) -> None:
        """:meth:`update` for a single event, with the same arithmetic."""
        self.count += 1
        self.correct += (probability >= 0.5) == (label == 1)
        p = min(max(probability, EPS), 1 - EPS)
        self.log_loss_sum += -(math.log(p) if label == 1 else math.log1p(-p))
        self.reference_correct += reference_correct
        bins = self.positive_bins if label == 1 else self.negative_bins
        bins[min(int(probability * self.auc_bins), self.auc_bins - 1)] += 1
        position = self._next
        self._labels[position] = label
        self._probabilities[position] = probability
        self._reference[position] = reference_correct
        self._next = (position + 1) % self.window

    def whole(self) -> dict[str, float]:
        """Scores over every labelled event so far (NaN before the first)."""
        if self.count == 0:
            return dict.fromkeys(METRICS, math.nan)
        accuracy = self.correct / self.count
        return {
            "accuracy": accuracy,
            "log_loss": self.log_loss_sum / self.count,
            "roc_auc": self._binned_auc(),
            "kappa_temporal": kappa_temporal(accuracy, self.reference_correct / self.count),
        }

    def rolling(self) -> dict[str, float]:
        """Scores over the latest ``window`` labelled events."""
        size = min(self.count, self.window)
        if size == 0:
            return dict.fromkeys(METRICS, math.nan)
        labels = self._labels[:size]
        probabilities = self._probabilities[:size]
        accuracy = float(((probabilities >= 0.5) == (labels == 1)).mean())
        return {
            "accuracy": accuracy,
            "log_loss": float(log_loss_terms(labels, probabilities).mean()),
            "roc_auc": roc_auc(labels, probabilities),
            "kappa_temporal": kappa_temporal(accuracy, float(self._reference[:size].mean())),
        }

    def to_state(self) -> State:
        """The scores as data (:mod:`stream_lstm.models.state_data`): counts, sums, the AUC bins
        and the rolling window's ring buffer."""
        return {
            "window": self.window,
            "auc_bins": self.auc_bins,
            "count": self.count,
            "correct": int(self.correct),
            "log_loss_sum": self.log_loss_sum,
            "reference_correct": int(self.reference_correct),
            "positive_bins": self.positive_bins,
            "negative_bins": self.negative_bins,
            "labels": self._labels,
            "probabilities": self._probabilities,
            "reference": self._reference,
            "next": self._next,
        }

    @classmethod
    def from_state(cls, tree: Any, where: str) -> Scorer:
        """The scorer of a :meth:`to_state` (:class:`~stream_lstm.errors.CheckpointRejected` if
        ``tree`` is not one). Sizes are taken from the arrays, which the checkpoint's bytes hold,
        so that no number in it makes this allocate more."""
        fields = Fields(tree, where, _SCORER_FIELDS)
        window = fields.int("window", low=1)
        auc_bins = fields.int("auc_bins", low=1)
        scorer = cls.__new__(cls)
        scorer.window, scorer.auc_bins = window, auc_bins
        scorer.count = fields.int("count")
        scorer.correct = fields.int("correct", high=scorer.count)
        scorer.reference_correct = fields.int("reference_correct", high=scorer.count)
        scorer.log_loss_sum = fields.float("log_loss_sum", low=0.0)
        scorer.positive_bins = fields.array("positive_bins", "int64", (auc_bins,))
        scorer.negative_bins = fields.array("negative_bins", "int64", (auc_bins,))
        scorer._labels = fields.array("labels", "int8", (window,))
        scorer._probabilities = fields.array("probabilities", "float64", (window,))
        scorer._reference = fields.array("reference", "bool", (window,))
        scorer._next = fields.int("next", high=window - 1)
        if (scorer.positive_bins < 0).any() or (scorer.negative_bins < 0).any():
            raise damaged(where, "an AUC bin is negative")
        if ((scorer._labels != 0) & (scorer._labels != 1)).any():
            raise damaged(fields.path("labels"), "a label is neither 0 nor 1")
        if not ((scorer._probabilities >= 0) & (scorer._probabilities <= 1)).all():
            raise damaged(fields.path("probabilities"), "a probability is outside [0, 1]")
        return scorer

    def _binned_auc(self) -> float:
        positives = int(self.positive_bins.sum())
        negatives = int(self.negative_bins.sum())
        if positives == 0 or negatives == 0:
            return math.nan
        negatives_below = np.cumsum(self.negative_bins) - self.negative_bins
        wins = (self.positive_bins * negatives_below).sum() + 0.5 * (
            self.positive_bins * self.negative_bins
        ).sum()
        return float(wins / (positives * negatives))


_SCORER_FIELDS = (
    "window",
    "auc_bins",
    "count",
    "correct",
    "log_loss_sum",
    "reference_correct",
    "positive_bins",
    "negative_bins",
    "labels",
    "probabilities",
    "reference",
    "next",
)
