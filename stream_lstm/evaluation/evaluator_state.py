"""A :class:`~stream_lstm.evaluation.prequential.PrequentialEvaluator` as data and back: each
model's state, the scores, the kappa-temporal reference, the counts, the traces and the mixture.

Apart from the evaluator, so that what a checkpoint holds, and how strictly it is read, is in one
place (:mod:`stream_lstm.models.state_data` reads every field strictly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from stream_lstm.errors import EvaluationError
from stream_lstm.evaluation.mixture import FixedShareMixture
from stream_lstm.evaluation.outside import OutsideQueue
from stream_lstm.evaluation.scores import Scorer
from stream_lstm.models.build import MODEL_NAMES as BUILT_MODELS
from stream_lstm.models.build import model_from_state
from stream_lstm.models.no_change import NoChangeBaseline
from stream_lstm.models.protocols import OnlineClassifier
from stream_lstm.models.state_data import Fields, State, damaged

if TYPE_CHECKING:
    from stream_lstm.evaluation.prequential import PrequentialEvaluator

Evaluator = TypeVar("Evaluator", bound="PrequentialEvaluator")

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


def evaluator_state(evaluator: PrequentialEvaluator) -> State:
    """``evaluator`` as data (:mod:`stream_lstm.models.state_data`): each model's
    ``to_state()`` in order, the scores, the kappa-temporal reference, counts, traces and, with
    one, the mixture."""
    if evaluator.outside or evaluator.scored_elsewhere:
        raise EvaluationError(
            "an evaluator that scores models of another process, or leaves its own to another to "
            "score, is not saved"
        )
    mixture = {} if evaluator.mixture is None else {"mixture": evaluator.mixture.to_state()}
    started = {"started_at": dict(evaluator.started_at)} if evaluator.started_at else {}
    return {
        "window": evaluator.window,
        "models": [{"name": name, "state": model.to_state()} for name, model in evaluator.models.items()],
        "scores": {name: scorer.to_state() for name, scorer in evaluator.scores.items()},
        "reference": evaluator.reference.to_state(),
        "seconds": {name: float(seconds) for name, seconds in evaluator.seconds.items()},
        "events": evaluator.events,
        "labelled": evaluator.labelled,
        "keep_trace": evaluator.keep_trace,
        "trace": {
            name: np.concatenate(parts).astype(bool) if parts else np.zeros(0, dtype=bool)
            for name, parts in evaluator.trace.items()
        },
        **mixture,
        **started,
    }


def evaluator_from_state(cls: type[Evaluator], tree: Any, where: str) -> Evaluator:
    """The evaluator (of class ``cls``) of an :func:`evaluator_state`
    (:class:`~stream_lstm.errors.CheckpointRejected` if ``tree`` is not one). A checkpoint written
    before the mixture existed has none; one written before models could be added on resume has
    no ``started_at``."""
    optional = [name for name in ("mixture", "started_at") if isinstance(tree, dict) and name in tree]
    with_mixture = "mixture" in optional
    fields = Fields(tree, where, (*_EVALUATOR_FIELDS, *optional))
    models: dict[str, OnlineClassifier] = {}
    for index, entry in enumerate(fields.list("models")):
        at = f"{fields.path('models')}[{index}]"
        model = Fields(entry, at, ("name", "state"))
        name = model.str("name", choices=BUILT_MODELS)
        if name in models:
            raise damaged(at, f"model {name} is given twice")
        models[name] = model_from_state(model.raw("state"), f"{at}.state")
    if not models:
        raise damaged(fields.path("models"), "no model")
    evaluator = cls.__new__(cls)
    evaluator.models = models
    evaluator.outside = ()
    evaluator.scored_elsewhere = False
    evaluator.mixture = None
    if with_mixture:
        evaluator.mixture = FixedShareMixture.from_state(fields.raw("mixture"), fields.path("mixture"))
        if list(evaluator.mixture.experts) != list(models):
            raise damaged(fields.path("mixture.experts"), "the mixture's experts are not the models")
    names = evaluator.names
    evaluator.window = fields.int("window", low=1)
    scores = fields.nested("scores", names)
    evaluator.scores = {name: Scorer.from_state(scores.raw(name), scores.path(name)) for name in names}
    if any(scorer.window != evaluator.window for scorer in evaluator.scores.values()):
        raise damaged(fields.path("scores"), "a scorer's window is not the evaluator's")
    evaluator.reference = NoChangeBaseline.from_state(fields.raw("reference"), fields.path("reference"))
    seconds = fields.nested("seconds", names)
    evaluator.seconds = {name: seconds.float(name, low=0.0) for name in names}
    evaluator.events = fields.int("events")
    evaluator.labelled = fields.int("labelled", high=evaluator.events)
    evaluator.started_at = {}
    if "started_at" in optional:
        raw = fields.raw("started_at")
        begun = [name for name in names if isinstance(raw, dict) and name in raw]
        started = fields.nested("started_at", begun)  # refuses a name that is no model's
        evaluator.started_at = {name: started.int(name, low=1, high=evaluator.events) for name in begun}
    evaluator.keep_trace = fields.bool("keep_trace")
    trace = fields.nested("trace", names)
    evaluator.trace = {name: [trace.array(name, "bool", (None,))] for name in names}
    evaluator.trace = {name: parts if parts[0].size else [] for name, parts in evaluator.trace.items()}
    evaluator._waiting = OutsideQueue(())
    return evaluator
