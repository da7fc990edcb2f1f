"""Prequential (test-then-train) evaluation of several models on the same micro-batches.

For every micro-batch, every model first predicts all its events, the predictions are scored
against the labels, and only then does each model learn the batch. Scores are kept over the
whole stream and over a rolling window of the latest labelled events
(:mod:`stream_lstm.evaluation.scores`); :meth:`PrequentialEvaluator.results` hands them over
(:mod:`stream_lstm.evaluation.results`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from stream_lstm.errors import ConfigError
from stream_lstm.evaluation.results import EvaluationResults, model_reports, rolling_accuracy
from stream_lstm.evaluation.scores import METRICS as METRICS
from stream_lstm.evaluation.scores import Scorer
from stream_lstm.messages.events import Event
from stream_lstm.models.baselines import LogisticRegressionBaseline, NoChangeBaseline
from stream_lstm.models.build import MODEL_NAMES as MODEL_NAMES
from stream_lstm.models.build import build_models as build_models
from stream_lstm.models.build import model_from_state
from stream_lstm.models.protocols import (
    GuardedModel,
    KeyedModel,
    OnlineClassifier,
    PredictsApart,
    TrainedModel,
    models_that,
)
from stream_lstm.models.state_data import Fields, State, damaged

# METRICS, MODEL_NAMES and build_models are imported from here too; Scorer must stay importable
# from here, since checkpoints written before it moved to evaluation.scores name this module.

#: The name under which the kappa-temporal reference's key state is exported.
REFERENCE = "_reference"

#: Attributes of evaluators pickled by versions that could merge another evaluator's results
#: into one (now :func:`~stream_lstm.evaluation.results.combine_results`); dropped on loading.
_RETIRED_ATTRIBUTES = ("_report_only", "_added_guard_stats")


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
            predictions[name] = model.predict_batch(events)
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
            reference = self.reference.predict_batch(events)
            if not every:
                reference = reference[labelled]
            reference_correct = (reference >= 0.5) == (labels == 1)
            for name, scorer in self.scores.items():
                probabilities = predictions[name] if every else predictions[name][labelled]
                scorer.update(labels, probabilities, reference_correct)
                if self.keep_trace:
                    self.trace[name].append((probabilities >= 0.5) == (labels == 1))
        self.reference.learn_batch(events)
        remote = self._asynchronous()  # their seconds come with their predictions
        for name, model in self.models.items():
            started = time.perf_counter()
            model.learn_batch(events)
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

    def results(self) -> EvaluationResults:
        """Scores, model seconds, traces, counts and guard counts, as they stand now.

        Lets models run by another evaluator (in another process, on the same events) be
        reported beside this one's (:func:`~stream_lstm.evaluation.results.combine_results`).
        """
        return EvaluationResults(
            events=self.events,
            labelled=self.labelled,
            window=self.window,
            scores=self.scores,
            seconds=self.seconds,
            trace=self.trace,
            guards=self.guard_stats(),
        )

    def guard_stats(self) -> dict[str, dict[str, int]]:
        """Per model that has guards (the LSTM, the logistic regression): what they left out,
        cumulative (see ``LSTMLearner.guard_stats``)."""
        return {name: model.guard_stats() for name, model in models_that(self.models, GuardedModel).items()}

    def report(self) -> dict[str, dict[str, Any]]:
        """Per model: whole-stream scores, rolling scores and the model's own events/s."""
        return model_reports(self.scores, self.seconds, self.events)

    def rolling_accuracy_curve(self, name: str) -> np.ndarray:
        """Rolling accuracy after each labelled event (needs ``keep_trace=True``)."""
        return rolling_accuracy(self.trace[name], self.window)

    def learner_settings(self) -> dict[str, Any]:
        """The settings its models were built with, as ``stream-lstm run`` names them: ``models``,
        ``window``, ``max_keys``, the LSTM's hyperparameters (with an LSTM) and the feature bound,
        clip and category buckets the logistic regression shares with it (with one). A checkpoint
        holds them."""
        settings: dict[str, Any] = {
            "models": list(self.models),
            "window": self.window,
            "max_keys": self.reference.max_keys,
        }
        for model in self.models.values():
            if isinstance(model, TrainedModel):
                settings.update(model.hyperparameters())
            elif isinstance(model, LogisticRegressionBaseline):
                settings.setdefault("max_features", model.max_features)
                settings.setdefault("input_clip", model.input_clip)
                settings.setdefault("category_buckets", model.category_buckets)
        return settings

    def to_state(self) -> State:
        """The evaluator as data (:mod:`stream_lstm.models.state_data`): each model's
        ``to_state()`` in order, the scores, the kappa-temporal reference, counts and traces."""
        return {
            "window": self.window,
            "models": [{"name": name, "state": model.to_state()} for name, model in self.models.items()],
            "scores": {name: scorer.to_state() for name, scorer in self.scores.items()},
            "reference": self.reference.to_state(),
            "seconds": {name: float(seconds) for name, seconds in self.seconds.items()},
            "events": self.events,
            "labelled": self.labelled,
            "keep_trace": self.keep_trace,
            "trace": {
                name: np.concatenate(parts).astype(bool) if parts else np.zeros(0, dtype=bool)
                for name, parts in self.trace.items()
            },
        }

    @classmethod
    def from_state(cls, tree: Any, where: str) -> PrequentialEvaluator:
        """The evaluator of a :meth:`to_state` (:class:`~stream_lstm.errors.CheckpointRejected` if
        ``tree`` is not one)."""
        fields = Fields(tree, where, _EVALUATOR_FIELDS)
        models: dict[str, OnlineClassifier] = {}
        for index, entry in enumerate(fields.list("models")):
            at = f"{fields.path('models')}[{index}]"
            model = Fields(entry, at, ("name", "state"))
            name = model.str("name", choices=MODEL_NAMES)
            if name in models:
                raise damaged(at, f"model {name} is given twice")
            models[name] = model_from_state(model.raw("state"), f"{at}.state")
        if not models:
            raise damaged(fields.path("models"), "no model")
        evaluator = cls.__new__(cls)
        evaluator.models = models
        evaluator.window = fields.int("window", low=1)
        scores = fields.nested("scores", models)
        evaluator.scores = {name: Scorer.from_state(scores.raw(name), scores.path(name)) for name in models}
        if any(scorer.window != evaluator.window for scorer in evaluator.scores.values()):
            raise damaged(fields.path("scores"), "a scorer's window is not the evaluator's")
        evaluator.reference = NoChangeBaseline.from_state(fields.raw("reference"), fields.path("reference"))
        seconds = fields.nested("seconds", models)
        evaluator.seconds = {name: seconds.float(name, low=0.0) for name in models}
        evaluator.events = fields.int("events")
        evaluator.labelled = fields.int("labelled", high=evaluator.events)
        evaluator.keep_trace = fields.bool("keep_trace")
        trace = fields.nested("trace", models)
        evaluator.trace = {name: [trace.array(name, "bool", (None,))] for name in models}
        evaluator.trace = {name: parts if parts[0].size else [] for name, parts in evaluator.trace.items()}
        return evaluator

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Only the conversion of a checkpoint of the old pickle format unpickles an evaluator.
        for name in _RETIRED_ATTRIBUTES:
            state.pop(name, None)
        self.__dict__.update(state)


_EVALUATOR_FIELDS = (
    "window",
    "models",
    "scores",
    "reference",
    "seconds",
    "events",
    "labelled",
    "keep_trace",
    "trace",
)
