"""Prequential (test-then-train) evaluation of several models on the same micro-batches.

For every micro-batch, every model first predicts all its events, the predictions are scored
against the labels, and only then does each model learn the batch. Scores are kept over the
whole stream and over a rolling window of the latest labelled events.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

import numpy as np

from stream_lstm.errors import ConfigError, EvaluationError
from stream_lstm.messages.events import Event
from stream_lstm.models.baselines import LogisticRegressionBaseline, NoChangeBaseline
from stream_lstm.models.protocols import (
    GuardedModel,
    KeyedModel,
    OnlineClassifier,
    PredictsApart,
    models_that,
)

MODEL_NAMES = ("lstm", "logreg", "no_change")
METRICS = ("accuracy", "log_loss", "roc_auc", "kappa_temporal")

#: Probabilities are clipped to [EPS, 1 - EPS] for the log loss, so a confident miss costs ~34.5.
EPS = 1e-15


#: The LSTM's keyword arguments that the logistic regression takes too (the same meaning).
_SHARED_WITH_LOGREG = ("max_features", "input_clip")

#: The name under which the kappa-temporal reference's key state is exported.
REFERENCE = "_reference"


def build_models(
    names: Sequence[str], *, max_keys: int = 100_000, lstm: Mapping[str, Any] | None = None
) -> dict[str, OnlineClassifier]:
    """Create the named models; ``lstm`` holds keyword arguments for :class:`LSTMLearner`.

    The logistic regression gets the LSTM's ``max_features`` and ``input_clip`` (from ``lstm``,
    else the LSTM's defaults), so that both see the same features, clipped alike.
    """
    unknown = [name for name in names if name not in MODEL_NAMES]
    if unknown or not names:
        raise ConfigError(
            f"unknown model(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODEL_NAMES)}"
        )
    models: dict[str, OnlineClassifier] = {}
    for name in names:
        if name == "lstm":
            from stream_lstm.learner.lstm_learner import LSTMLearner  # torch is imported only when needed

            models[name] = LSTMLearner(max_keys=max_keys, **dict(lstm or {}))
        elif name == "logreg":
            shared = {key: value for key, value in (lstm or {}).items() if key in _SHARED_WITH_LOGREG}
            models[name] = LogisticRegressionBaseline(**shared)
        else:
            models[name] = NoChangeBaseline(max_keys=max_keys)
    return models


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


class PrequentialEvaluator:
    """Runs several models test-then-train on the same micro-batches and scores them.

    Parameters
    ----------
    models
        The models by name, e.g. from :func:`build_models`.
    window
        Size of the rolling window of the scores.
    max_keys
        Bound on the keys the no-change reference of kappa-temporal tracks.
    keep_trace
        Keep each model's per-event correctness, for plotting rolling accuracy afterwards.

    Examples
    --------
    >>> evaluator = PrequentialEvaluator(build_models(["no_change"]))
    >>> batch = [Event(key="a", label=1), Event(key="a", label=1), Event(key="a", label=0)]
    >>> evaluator.process(batch)["no_change"].tolist()
    [0.5, 1.0, 1.0]
    >>> round(evaluator.scores["no_change"].whole()["accuracy"], 3)
    0.667
    """

    #: Set by :meth:`add_results` (a class default, so that checkpoints of older versions load).
    _report_only = False
    #: The other evaluator's :meth:`guard_stats`, set by :meth:`add_results` (a class default too).
    _added_guard_stats: Mapping[str, dict[str, int]] = MappingProxyType({})

    def __init__(
        self,
        models: Mapping[str, OnlineClassifier],
        *,
        window: int = 1000,
        max_keys: int = 100_000,
        keep_trace: bool = False,
    ) -> None:
        if not models:
            raise ConfigError("at least one model is needed")
        self.models = dict(models)
        self.window = window
        self.scores = {name: Scorer(window=window) for name in self.models}
        # kappa-temporal compares with no-change on exactly the same events, whatever is run.
        self.reference = NoChangeBaseline(max_keys=max_keys)
        self.seconds = dict.fromkeys(self.models, 0.0)
        self.events = 0
        self.labelled = 0
        self.keep_trace = keep_trace
        self.trace: dict[str, list[np.ndarray]] = {name: [] for name in self.models}

    def reset_scores(self) -> None:
        """Start the scores and counts afresh, keeping the models (a warm start from another run)."""
        self.scores = {name: Scorer(window=self.window) for name in self.models}
        self.seconds = dict.fromkeys(self.models, 0.0)
        self.events = 0
        self.labelled = 0
        self.trace = {name: [] for name in self.models}

    def predict(self, events: Sequence[Event]) -> dict[str, np.ndarray]:
        """Every model's probabilities for the batch, before any of it is learned."""
        if self._report_only:
            raise EvaluationError("this evaluator holds another's results: it only reports now")
        # A model in another process predicts while the others run here; its seconds are its own.
        remote = self._asynchronous()
        for model in remote.values():
            if not model.predicting(events):
                model.start_predict(events)
        predictions = {}
        for name, model in self.models.items():
            if name in remote:
                continue
            started = time.perf_counter()
            predictions[name] = model.predict_proba_many(events)
            self.seconds[name] += time.perf_counter() - started
        for name, model in remote.items():
            predictions[name], seconds = model.finish_predict(events)
            self.seconds[name] += seconds
        return {name: predictions[name] for name in self.models}

    def send_ahead(self, events: Sequence[Event]) -> bool:
        """Start the predictions of the models in other processes; False if there are none.

        They work on ``events`` while this process finishes the previous batch: :meth:`predict`
        of ``events`` (after :meth:`learn` of the batch before) collects them. The answers are
        the same as without sending ahead, since such a model keeps the order of its batches.
        """
        remote = self._asynchronous()
        for model in remote.values():
            model.start_predict(events)
        return bool(remote)

    def _asynchronous(self) -> dict[str, Any]:
        return models_that(self.models, PredictsApart)

    def learn(self, events: Sequence[Event], predictions: Mapping[str, np.ndarray]) -> None:
        """Score the batch's predictions against its labels, then let every model learn it."""
        raw_labels = [e.label for e in events]
        every = None not in raw_labels
        labelled = None if every else np.array([y is not None for y in raw_labels], dtype=bool)
        n_labelled = len(events) if every else int(labelled.sum())
        if n_labelled:
            labels = np.array([y for y in raw_labels if y is not None], dtype=np.int8)
            reference = self.reference.predict_proba_many(events)
            if not every:
                reference = reference[labelled]
            reference_correct = (reference >= 0.5) == (labels == 1)
            for name, scorer in self.scores.items():
                probabilities = predictions[name] if every else predictions[name][labelled]
                scorer.update(labels, probabilities, reference_correct)
                if self.keep_trace:
                    self.trace[name].append((probabilities >= 0.5) == (labels == 1))
        self.reference.learn_many(events)
        remote = self._asynchronous()  # their seconds come with their predictions
        for name, model in self.models.items():
            started = time.perf_counter()
            model.learn_many(events)
            if name not in remote:
                self.seconds[name] += time.perf_counter() - started
        self.events += len(events)
        self.labelled += n_labelled

    def process(self, events: Sequence[Event]) -> dict[str, np.ndarray]:
        """Predict, score and learn one micro-batch; return the predictions."""
        predictions = self.predict(events)
        self.learn(events, predictions)
        return predictions

    # ------------------------------------------------------------------ per-key state

    def _keyed(self) -> dict[str, KeyedModel]:
        keyed: dict[str, KeyedModel] = models_that(self.models, KeyedModel)
        keyed[REFERENCE] = self.reference
        return keyed

    def export_keys(self, keys: Sequence[str]) -> dict[str, Any]:
        """Every model's state of ``keys`` (recurrent states, previous labels), by model name.

        This is what a Kafka partition's next owner needs besides the offsets; weights and
        scores are not part of it.
        """
        return {name: model.export_keys(keys) for name, model in self._keyed().items()}

    def held_keys(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` that some model still tracks (the others were evicted everywhere)."""
        tracked = [model.tracked_keys() for model in self._keyed().values()]
        return {key for key in keys if any(key in held for held in tracked)}

    def import_keys(self, state: Mapping[str, Any]) -> None:
        """Continue the keys of an :meth:`export_keys` (models absent from it are skipped)."""
        for name, model in self._keyed().items():
            if name in state:
                model.import_keys(state[name])

    def forget_keys(self, keys: Sequence[str]) -> None:
        """Drop every model's state of ``keys``."""
        for model in self._keyed().values():
            model.forget_keys(keys)

    @contextmanager
    def keys_set_aside(self) -> Iterator[None]:
        """Inside the block no model tracks any key (to save weights without key states)."""
        detached: list[tuple[KeyedModel, Any]] = []
        try:
            for model in self._keyed().values():
                detached.append((model, model.detach_keys()))
            yield
        finally:
            for model, store in detached:
                model.attach_keys(store)

    def results(self) -> dict[str, Any]:
        """Scores, model seconds, traces and counts: what :meth:`add_results` takes.

        Lets models run by another evaluator (in another process, on the same events) be
        reported beside this one's.
        """
        return {
            "events": self.events,
            "labelled": self.labelled,
            "scores": self.scores,
            "seconds": self.seconds,
            "trace": self.trace,
            "guard_stats": self.guard_stats(),
        }

    def add_results(self, results: Mapping[str, Any], order: Sequence[str] = ()) -> None:
        """Report the models of another evaluator's :meth:`results` beside this one's.

        Both must have seen the same events; ``order`` lists model names in the order the
        report should show them (names not in it come last). The evaluator then only reports:
        it cannot process more events, since the added models are not here.
        """
        if (results["events"], results["labelled"]) != (self.events, self.labelled):
            raise EvaluationError(
                f"the two evaluations saw different events ({self.events:,} events, "
                f"{self.labelled:,} labelled here; {results['events']:,} and "
                f"{results['labelled']:,} there): did the file change while it was read? "
                "(--parallel false reads it once)"
            )
        clash = set(results["scores"]) & set(self.scores)
        if clash:
            raise EvaluationError(f"model(s) {', '.join(sorted(clash))} were evaluated twice")
        rank = {name: i for i, name in enumerate(order)}

        def ordered(mine: dict[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
            merged = {**mine, **theirs}
            return {name: merged[name] for name in sorted(merged, key=lambda n: rank.get(n, len(rank)))}

        self._report_only = True
        self._added_guard_stats = dict(results.get("guard_stats", {}))
        self.scores = ordered(self.scores, results["scores"])
        self.seconds = ordered(self.seconds, results["seconds"])
        self.trace = ordered(self.trace, results["trace"])

    def guard_stats(self) -> dict[str, dict[str, int]]:
        """Per model that has guards (the LSTM, the logistic regression): what they left out,
        cumulative (see ``LSTMLearner.guard_stats``), including the models of an
        :meth:`add_results`."""
        stats = {name: model.guard_stats() for name, model in models_that(self.models, GuardedModel).items()}
        return {**stats, **self._added_guard_stats}

    def report(self) -> dict[str, dict[str, Any]]:
        """Per model: whole-stream scores, rolling scores and the model's own events/s."""
        report = {}
        for name, scorer in self.scores.items():
            seconds = self.seconds[name]
            report[name] = {
                **scorer.whole(),
                "rolling": scorer.rolling(),
                "events_per_second": self.events / seconds if seconds > 0 else math.nan,
            }
        return report

    def rolling_accuracy_curve(self, name: str) -> np.ndarray:
        """Rolling accuracy after each labelled event (needs ``keep_trace=True``)."""
        if not self.trace[name]:
            return np.zeros(0)
        correct = np.concatenate(self.trace[name]).astype(np.float64)
        cumulative = np.concatenate([[0.0], np.cumsum(correct)])
        n = np.arange(1, correct.size + 1)
        start = np.maximum(n - self.window, 0)
        return (cumulative[n] - cumulative[start]) / (n - start)
