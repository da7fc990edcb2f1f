"""Prequential (test-then-train) evaluation of several models on the same micro-batches.

For every micro-batch, every model first predicts all its events, the predictions are scored
against the labels, and only then does each model learn the batch. Scores are kept over the
whole stream and over a rolling window of the latest labelled events
(:mod:`stream_lstm.evaluation.scores`); :meth:`PrequentialEvaluator.results` hands them over
(:mod:`stream_lstm.evaluation.results`).

Models can also run in one process and be scored in another: an evaluator built with
``scored_elsewhere`` only runs its models, and one with ``outside`` models scores them from the
probabilities the other process sends (:meth:`PrequentialEvaluator.take_outside`), exactly as if it
ran them (``stream-lstm evaluate`` with two processes, :mod:`stream_lstm.offline.side_lane`;
the waiting batches are :mod:`stream_lstm.evaluation.outside`'s).

Over 450 lines, for one class: the evaluator's public face (predict, score, learn; its models'
key states, settings and guard counts, which the service reaches through it) is one object. Its
parts with a job of their own are modules apart: the scores, the results, the mixture, the data
form (:mod:`~stream_lstm.evaluation.evaluator_state`) and the outside models' queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from stream_lstm.errors import ConfigError
from stream_lstm.evaluation.evaluator_state import evaluator_from_state, evaluator_state
from stream_lstm.evaluation.mixture import MIXTURE, FixedShareMixture
from stream_lstm.evaluation.outside import (
    OutsideQueue,
    WaitingBatch,
    check_outside,
    labelled_mask,
    labelled_probabilities,
)
from stream_lstm.evaluation.results import EvaluationResults, model_reports, rolling_accuracy
from stream_lstm.evaluation.scores import METRICS as METRICS
from stream_lstm.evaluation.scores import Scorer
from stream_lstm.messages.events import Event
from stream_lstm.models.baselines import LogisticRegressionBaseline
from stream_lstm.models.build import MODEL_NAMES as BUILT_MODELS
from stream_lstm.models.build import build_models as build_models
from stream_lstm.models.lag_logreg import LagLogisticRegression
from stream_lstm.models.no_change import NoChangeBaseline
from stream_lstm.models.protocols import (
    GuardedModel,
    KeyedModel,
    OnlineClassifier,
    PredictsApart,
    TrainedModel,
    models_that,
)
from stream_lstm.models.state_data import State

# METRICS, MODEL_NAMES and build_models are imported from here too; Scorer must stay importable
# from here, since checkpoints written before it moved to evaluation.scores name this module.

#: What ``--models`` accepts: the models :func:`build_models` builds, and the mixture of them.
MODEL_NAMES = (*BUILT_MODELS, MIXTURE)

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
    mixture
        The ``mix`` model (:mod:`stream_lstm.evaluation.mixture`), scored beside the models. Its
        experts are models of ``models`` or of ``outside``.
    outside
        Models that another process runs on the same micro-batches and this evaluator scores (and
        mixes, when its mixture mixes them), in this order, after ``models``: their probabilities
        of the labelled events come through :meth:`take_outside`. Their seconds are the other
        process's: :attr:`seconds` has none of them.
    scored_elsewhere
        Only run the models: predict and learn them, count events and labelled events, time them
        and keep their guard counts, but score nothing (no scores, traces or kappa-temporal
        reference), since another process scores them as its ``outside`` models.

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
        mixture: FixedShareMixture | None = None,
        outside: Sequence[str] = (),
        scored_elsewhere: bool = False,
    ) -> None:
        if not models:
            raise ConfigError("at least one model is needed")
        if MIXTURE in models:
            raise ConfigError(f"{MIXTURE} is the evaluator's mixture, not a model to pass")
        check_outside(list(models), list(outside), mixture, scored_elsewhere)
        self.models = dict(models)
        #: Models of another process that this evaluator scores (see :meth:`take_outside`).
        self.outside = tuple(outside)
        #: Whether another process scores this evaluator's models (it only runs them).
        self.scored_elsewhere = scored_elsewhere
        self.window = window
        self.mixture = mixture
        # kappa-temporal compares with no-change on exactly the same events, whatever is run.
        self.reference = NoChangeBaseline(max_keys=max_keys)
        self.keep_trace = keep_trace
        self.reset_scores()

    @property
    def names(self) -> list[str]:
        """The models it reports on: those of :attr:`models`, those of :attr:`outside`, then the
        mixture if there is one (all scored, unless :attr:`scored_elsewhere`)."""
        return [*self.models, *self.outside, *([MIXTURE] if self.mixture is not None else [])]

    def _timed(self) -> list[str]:
        """The models whose seconds it keeps: those it runs, and the mixture."""
        return [*self.models, *([MIXTURE] if self.mixture is not None else [])]

    def _runs_alone(self, change: str) -> None:
        """Refuse ``change`` when models are run in one process and scored in another."""
        if self.outside or self.scored_elsewhere:
            raise ConfigError(f"cannot {change} of an evaluator that shares its models with another process")

    def set_mixture(self, mixture: FixedShareMixture | None) -> None:
        """Add a mixture of the models (fresh scores), replace it, or drop it (``None``)."""
        self._runs_alone("set the mixture")
        if mixture is not None and list(mixture.experts) != list(self.models):
            raise ConfigError(f"the mixture must mix exactly the models {', '.join(self.models)}")
        self.mixture = mixture
        self.scores.pop(MIXTURE, None)
        self.seconds.pop(MIXTURE, None)
        self.trace.pop(MIXTURE, None)
        self.started_at.pop(MIXTURE, None)
        if mixture is not None:
            self.scores[MIXTURE] = Scorer(window=self.window)
            self.seconds[MIXTURE] = 0.0
            self.trace[MIXTURE] = []
            if self.events:
                self.started_at[MIXTURE] = self.events

    def change_models(self, names: Sequence[str], added: Mapping[str, OnlineClassifier]) -> None:
        """Run the models ``names`` from now on, in that order: those it runs already keep their
        state and scores, ``added`` holds the others (they start with fresh scores), and the rest
        are dropped. The mixture is dropped too, since its experts change: set a new one with
        :meth:`set_mixture`."""
        self._runs_alone("change the models")
        missing = [name for name in names if name not in self.models and name not in added]
        if missing or not names or MIXTURE in names:
            raise ConfigError(f"cannot run {', '.join(names)}: no model given for {', '.join(missing)}")
        self.set_mixture(None)
        models = {**self.models, **added}
        self.models = {name: models[name] for name in names}
        fresh = set(added)
        self.scores = {n: Scorer(window=self.window) if n in fresh else self.scores[n] for n in names}
        self.seconds = {n: 0.0 if n in fresh else self.seconds[n] for n in names}
        self.trace = {n: [] if n in fresh else self.trace[n] for n in names}
        started = {n: self.events if n in fresh else self.started_at.get(n, 0) for n in names}
        self.started_at = {n: at for n, at in started.items() if at}

    def reset_scores(self) -> None:
        """Start the scores and counts afresh, keeping the models (a warm start from another run)."""
        scored = [] if self.scored_elsewhere else self.names
        self.scores = {name: Scorer(window=self.window) for name in scored}
        self.seconds = dict.fromkeys(self._timed(), 0.0)
        self.events = 0
        #: The event count at which a model began, for one added later (see change_models).
        self.started_at: dict[str, int] = {}
        self.labelled = 0
        self.trace: dict[str, list[np.ndarray]] = {name: [] for name in scored}
        # Labelled batches that wait for the probabilities of the outside models, and theirs.
        self._waiting = OutsideQueue(self.outside)

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
        predictions = {name: predictions[name] for name in self.models}
        if self.mixture is not None and not self.outside:  # else it predicts in take_outside
            started = time.perf_counter()
            predictions[MIXTURE] = self.mixture.predict(predictions)
            self.seconds[MIXTURE] += time.perf_counter() - started
        return predictions

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
        """Score the batch's predictions against its labels, then let every model learn it.

        With :attr:`outside` models, the batch's labelled events wait for theirs
        (:meth:`take_outside`); with :attr:`scored_elsewhere`, nothing is scored.
        """
        raw_labels = [e.label for e in events]
        labelled = labelled_mask(raw_labels)
        n_labelled = len(events) if labelled is None else int(labelled.sum())
        if n_labelled and not self.scored_elsewhere:
            labels = np.array([y for y in raw_labels if y is not None], dtype=np.int8)
            reference = self.reference.predict_batch(events)
            if labelled is not None:
                reference = reference[labelled]
            reference_correct = (reference >= 0.5) == (labels == 1)
            for name, probabilities in labelled_probabilities(
                predictions, list(predictions), labelled
            ).items():
                self._score(name, labels, probabilities, reference_correct)
            mine = (
                {}
                if self.mixture is None
                else labelled_probabilities(predictions, list(self.models), labelled)
            )
            if self.outside:
                self._waiting.wait(WaitingBatch(labels, reference_correct, mine))
                self.take_outside({})
            elif self.mixture is not None:
                self._learn_mixture(labels, mine)
        if not self.scored_elsewhere:
            self.reference.learn_batch(events)
        remote = self._asynchronous()  # their seconds come with their predictions
        for name, model in self.models.items():
            started = time.perf_counter()
            model.learn_batch(events)
            if name not in remote:
                self.seconds[name] += time.perf_counter() - started
        self.events += len(events)
        self.labelled += n_labelled

    def _score(
        self, name: str, labels: np.ndarray, probabilities: np.ndarray, reference_correct: np.ndarray
    ) -> None:
        self.scores[name].update(labels, probabilities, reference_correct)
        if self.keep_trace:
            self.trace[name].append((probabilities >= 0.5) == (labels == 1))

    def _learn_mixture(self, labels: np.ndarray, experts: Mapping[str, np.ndarray]) -> None:
        """The mixture learns a batch's labels from its experts' probabilities of them."""
        assert self.mixture is not None
        started = time.perf_counter()
        self.mixture.learn(labels, experts)
        self.seconds[MIXTURE] += time.perf_counter() - started

    def take_outside(self, probabilities: Mapping[str, np.ndarray]) -> None:
        """Take the next probabilities of the :attr:`outside` models, and score each waiting batch
        for which every one's are now here (and mix it, with a mixture).

        ``probabilities`` holds, by model name, the probabilities of the next labelled events, in
        order, as the other process predicted them (on the same micro-batches). Each batch is
        scored exactly as if the models ran here; the mixture predicts it with the weights it had
        before that batch, then learns it, as in one process.
        """
        self._waiting.add(probabilities)
        for (labels, reference_correct, mine), arrived in self._waiting.complete():
            for name, values in arrived.items():
                self._score(name, labels, values, reference_correct)
            if self.mixture is not None:
                experts = {**mine, **arrived}
                started = time.perf_counter()
                mixed = self.mixture.predict(experts)
                self.seconds[MIXTURE] += time.perf_counter() - started
                self._score(MIXTURE, labels, mixed, reference_correct)
                self._learn_mixture(labels, experts)

    def waiting_batches(self) -> int:
        """Labelled batches that still wait for the probabilities of the :attr:`outside` models."""
        return len(self._waiting)

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
            started_at=dict(self.started_at),
        )

    def guard_stats(self) -> dict[str, dict[str, int]]:
        """Per model that has guards (the LSTM, the logistic regression): what they left out,
        cumulative (see ``LSTMLearner.guard_stats``)."""
        return {name: model.guard_stats() for name, model in models_that(self.models, GuardedModel).items()}

    def report(self) -> dict[str, dict[str, Any]]:
        """Per model: whole-stream scores, rolling scores and the model's own events/s."""
        return model_reports(self.scores, self.seconds, self.events, self.started_at)

    def rolling_accuracy_curve(self, name: str) -> np.ndarray:
        """Rolling accuracy after each labelled event (needs ``keep_trace=True``)."""
        return rolling_accuracy(self.trace[name], self.window)

    def learner_settings(self) -> dict[str, Any]:
        """The settings its models were built with, as ``stream-lstm run`` names them: ``models``,
        ``window``, ``max_keys``, the LSTM's hyperparameters (with an LSTM) and the feature bound,
        clip and category buckets the logistic regression shares with it (with one). A checkpoint
        holds them."""
        settings: dict[str, Any] = {
            "models": self.names,
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
                if isinstance(model, LagLogisticRegression):
                    settings.setdefault("trend_scales", model.trend_scales)
                    settings.setdefault("stream_rate_half_life", model.stream_rate.half_life)
        return settings

    def to_state(self) -> State:
        """The evaluator as data (:func:`~stream_lstm.evaluation.evaluator_state.evaluator_state`)."""
        return evaluator_state(self)

    @classmethod
    def from_state(cls, tree: Any, where: str) -> PrequentialEvaluator:
        """The evaluator of a :meth:`to_state` (:class:`~stream_lstm.errors.CheckpointRejected` if
        ``tree`` is not one; :func:`~stream_lstm.evaluation.evaluator_state.evaluator_from_state`)."""
        return evaluator_from_state(cls, tree, where)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Only the conversion of a checkpoint of the old pickle format unpickles an evaluator.
        for name in _RETIRED_ATTRIBUTES:
            state.pop(name, None)
        state.setdefault("mixture", None)
        state.setdefault("_waiting", OutsideQueue(()))
        state.setdefault("started_at", {})
        state.setdefault("outside", ())
        state.setdefault("scored_elsewhere", False)
        self.__dict__.update(state)


def build_evaluator(
    names: Sequence[str],
    *,
    window: int = 1000,
    max_keys: int = 100_000,
    keep_trace: bool = False,
    lstm: Mapping[str, Any] | None = None,
    outside: Sequence[str] = (),
    scored_elsewhere: bool = False,
) -> PrequentialEvaluator:
    """The evaluator of ``--models`` ``names``: the models :func:`build_models` builds and, with
    :data:`~stream_lstm.evaluation.mixture.MIXTURE` among ``names``, their mixture (of the models
    in the order of ``names``).

    The models of ``outside`` (among ``names``) are not built: another process runs them, and
    the evaluator scores them from their probabilities (:meth:`PrequentialEvaluator.take_outside`).
    With ``scored_elsewhere`` it only runs its models, for another process to score them.
    """
    experts = [name for name in names if name != MIXTURE]
    unknown = [name for name in outside if name not in experts]
    if unknown:
        raise ConfigError(f"the models scored from another process ({', '.join(unknown)}) must be in names")
    built = [name for name in experts if name not in outside]
    if MIXTURE in names and not experts:
        raise ConfigError(f"{MIXTURE} mixes other models: name at least one more in --models")
    if experts and not built:
        raise ConfigError("at least one model besides the mixture must run in this process")
    mixture = FixedShareMixture(experts) if MIXTURE in names else None
    return PrequentialEvaluator(
        build_models(built, max_keys=max_keys, lstm=lstm),
        window=window,
        max_keys=max_keys,
        keep_trace=keep_trace,
        mixture=mixture,
        outside=[name for name in experts if name in outside],
        scored_elsewhere=scored_elsewhere,
    )
