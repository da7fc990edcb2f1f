"""``logreg_lags``: the logistic regression given what the LSTM is given, plus lag features.

``logreg`` sees an event's own features only. The LSTM sees more: as inputs, the key's previous
label and the time since the key's previous event, and through its recurrence every earlier event
of the key. ``logreg_lags`` gets all of this that a linear model can take in, so that the
comparison with the LSTM answers "does recurrence help beyond lag features?":

* the LSTM's inputs of the event (:mod:`stream_lstm.learner.encoding`): its features, the log time
  gap since the key's previous event with a timestamp (standardised), the key's previous label as
  -1/+1 (0 when there is none) and a flag for "no previous label", and the category buckets;
* the LSTM's trend inputs (:mod:`stream_lstm.learner.trend`, ``trend_scales`` of them per
  feature): each standardised feature's deviation from the key's exponential moving average of
  it, at half-lives of 4, 16, 64, ... events of the key;
* the stream rate (:mod:`stream_lstm.messages.stream_rate`, half-life ``stream_rate_half_life``),
  as the LSTM gets it: a feature the model adds once its stream has more than one key;
* the key's last ``lags`` events (3 by default), newest first, as lag features: each one's
  features as they were standardised (and clipped) for its own prediction, and its label as -1/+1
  (0 for an event without a label). A key with fewer earlier events has 0 in the missing lags'
  inputs. The LSTM's window likewise holds its earlier inputs as they were encoded.

The previous label is taken exactly as the LSTM takes it: the label of the latest earlier labelled
event of the key, earlier events of the same batch included; so are the lags (the LSTM's
recurrence reads the earlier events of the batch, in order, before it predicts an event). No
event's own label is ever an input of its prediction, and the weights used for a batch are those
learned from earlier batches (test-then-train, as every model here).

Per key it keeps the previous label, the latest timestamp, the last ``lags`` events' standardised
features (restricted to the ``max_features`` names in use) and labels, and the trend averages,
for at most ``max_keys`` keys (the least recently seen key is forgotten first, as the LSTM's are).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from river import preprocessing

from stream_lstm.errors import ConfigError
from stream_lstm.messages.categories import DEFAULT_CATEGORY_BUCKETS
from stream_lstm.messages.events import Event
from stream_lstm.messages.stream_rate import (
    DEFAULT_STREAM_RATE_HALF_LIFE,
    NO_STREAM_RATE,
    StreamRate,
    check_stream_rate_half_life,
    with_stream_rate,
)
from stream_lstm.messages.trend_scales import (
    DEFAULT_TREND_SCALES,
    MAX_TREND_SCALES,
    check_trend_scales,
    trend_rates,
)
from stream_lstm.models.baselines import LogisticRegressionBaseline
from stream_lstm.models.lag_history import (
    Context,
    KeyHistory,
    bound_feature_names,
    check_feature_names,
    histories_from_state,
    histories_to_state,
    trend_input,
)
from stream_lstm.models.protocols import KeyedModel
from stream_lstm.models.recent_keys import remember
from stream_lstm.models.state_data import Fields, State, checked_by, damaged
from stream_lstm.models.weight_tables import read_weight_table, weight_table

#: How many of the key's earlier events are lag features by default.
DEFAULT_LAGS = 3

#: The names of the inputs besides features, buckets and lags. Tuples, so that no feature name
#: (always a string) and no bucket (an integer) can be one of them.
GAP = ("gap",)
PREVIOUS_LABEL = ("previous_label",)
NO_PREVIOUS_LABEL = ("no_previous_label",)
CONTEXT_INPUTS = (GAP, PREVIOUS_LABEL, NO_PREVIOUS_LABEL)


def lag_feature_input(lag: int, name: str) -> tuple[str, int, str]:
    """The input name of feature ``name`` of the key's ``lag``-th previous event (from 1)."""
    return ("lag", lag, name)


def lag_label_input(lag: int) -> tuple[str, int]:
    """The input name of the label of the key's ``lag``-th previous event (from 1)."""
    return ("lag_label", lag)


class LagLogisticRegression(LogisticRegressionBaseline, KeyedModel):
    """River's standard scaler and logistic regression on the LSTM's inputs and lag features.

    Everything :class:`~stream_lstm.models.baselines.LogisticRegressionBaseline` does (the bounded
    feature names, clipping, category buckets, learning one event at a time with the scaler
    first) it does alike; the time gap has a standard scaler of its own. Inputs are named as in
    :data:`CONTEXT_INPUTS`, :func:`lag_feature_input` and :func:`lag_label_input`.

    Parameters
    ----------
    lags
        How many of the key's earlier events are lag features (0: only the LSTM's inputs).
    max_keys
        How many keys keep a history; beyond it the least recently seen key is forgotten.
    trend_scales
        How many trend inputs each feature gets, as the LSTM's (0: none).
    stream_rate_half_life
        The half-life of the stream rate, as the LSTM's (0: none).
    learning_rate, l2, max_features, input_clip, category_buckets
        As for :class:`~stream_lstm.models.baselines.LogisticRegressionBaseline`.

    Examples
    --------
    >>> model = LagLogisticRegression(lags=2, trend_scales=0)
    >>> batch = [Event(key="a", ts=0.0, features={"x": 1.0}, label=1), Event(key="a", ts=1.0, label=0)]
    >>> [(c.previous_label, round(c.gap, 3), len(c.lags)) for c in model.contexts(batch)]
    [(None, nan, 0), (1, 0.693, 1)]
    >>> model.predict_batch(batch).tolist()
    [0.5, 0.5]
    >>> model.learn_batch(batch)
    >>> model.contexts([Event(key="a")])[0].previous_label, list(model.tracked_keys())
    (0, ['a'])
    """

    def __init__(
        self,
        *,
        lags: int = DEFAULT_LAGS,
        max_keys: int = 100_000,
        learning_rate: float = 0.01,
        l2: float = 0.0,
        max_features: int = 32,
        input_clip: float = 10.0,
        category_buckets: int = DEFAULT_CATEGORY_BUCKETS,
        trend_scales: int = DEFAULT_TREND_SCALES,
        stream_rate_half_life: float = DEFAULT_STREAM_RATE_HALF_LIFE,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            l2=l2,
            max_features=max_features,
            input_clip=input_clip,
            category_buckets=category_buckets,
        )
        if isinstance(lags, bool) or not isinstance(lags, int) or lags < 0:
            raise ConfigError(f"lags must be a non-negative integer, got {lags!r}")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigError(f"max_keys must be a positive integer, got {max_keys!r}")
        self.lags = lags
        self.max_keys = max_keys
        self.trend_scales = check_trend_scales(trend_scales)
        self._trend_rates = trend_rates(trend_scales).tolist()
        self._trend_input_names: list[dict[str, tuple[str, int, str]]] = [{} for _ in range(trend_scales)]
        self.gap_scaler = preprocessing.StandardScaler()
        self.stream_rate = StreamRate(stream_rate_half_life)
        #: Each tracked key's history, least recently seen first.
        self.histories: OrderedDict[str, KeyHistory] = OrderedDict()
        # The input names of the lags' features and labels (built once, looked up per event).
        self._lag_feature_names: list[dict[str, tuple[str, int, str]]] = [{} for _ in range(lags)]
        self._lag_label_names = [lag_label_input(lag) for lag in range(1, lags + 1)]
        # The last batch predicted, with what predict_batch found for it, for learn_batch.
        self._walked: _Walk | None = None

    # ------------------------------------------------------------------ predict and learn

    def predict_batch(self, events: Sequence[Event]) -> np.ndarray:
        """Probability of label 1 for each event, from the weights before this batch and the
        earlier events of its key (those of this batch included)."""
        walk = self._walk(events)
        self._walked = walk
        predict = self.classifier.predict_proba_one
        probabilities = np.array(
            [
                predict({**scaled, **context}).get(True, 0.5)
                for scaled, context in zip(walk.scaled, walk.context_inputs, strict=True)
            ]
        )
        finite = np.isfinite(probabilities)
        if not finite.all():  # no accepted input leads here; a NaN must never be a prediction
            probabilities[~finite] = 0.5
        return probabilities

    def learn_batch(self, events: Sequence[Event]) -> None:
        """Learn each labelled event in order, then move every key of the batch past its events.

        As the river pipeline does, the feature scaler learns an event before the event's own
        features are standardised for learning; its other inputs (the gap, the previous label,
        the lags) are those it was predicted from, which saves building them twice.
        """
        walk, self._walked = self._walked, None
        if walk is None or walk.events is not events:
            walk = self._walk(events)
        scaler, gap_scaler, learn = self.scaler, self.gap_scaler, self.classifier.learn_one
        transform, clip = scaler.transform_one, self._clip
        for event, x, context, inputs in zip(
            events, walk.features, walk.contexts, walk.context_inputs, strict=True
        ):
            if event.label is not None:
                scaler.learn_one(x)
                if context.gap == context.gap:
                    gap_scaler.learn_one({"gap": context.gap})
                learn({**clip(transform(x)), **inputs}, bool(event.label))
        # In order of first appearance in the batch, as the LSTM's.
        remember(self.histories, walk.histories.items(), self.max_keys)
        if events:
            self.stream_rate.learned(walk.rate_after, (event.key for event in events))

    def contexts(self, events: Sequence[Event]) -> list[Context]:
        """What each event's prediction takes from the earlier events of its key (changes no
        state but the feature names in use, as :meth:`predict_batch`)."""
        return self._walk(events).contexts

    def _walk(self, events: Sequence[Event]) -> _Walk:
        """Each event's bounded and standardised features and its other inputs; and each key's
        history after the batch (copies: the stored ones change in :meth:`learn_batch` only)."""
        features = self._bounded(events)
        rates, rate_after = self.stream_rate.before([event.label for event in events])
        if self.stream_rate.applies:
            features = with_stream_rate(features, rates, self.feature_names, self.max_features)
        buckets = self._bucket_inputs(events) or [None] * len(events)
        transform, clip = self.scaler.transform_one, self._clip
        scaled = [clip(transform(x)) for x in features]  # new dicts (river's transform makes one)
        stored, lags = self.histories, self.lags
        histories: dict[str, KeyHistory] = {}
        contexts = []
        trends: list[dict[Any, float] | None] = []
        scales, rates, trend_names = self.trend_scales, self._trend_rates, self._trend_input_names
        for event, x in zip(events, scaled, strict=True):
            history = histories.get(event.key)
            if history is None:
                known = stored.get(event.key)
                history = histories[event.key] = (
                    known.copy() if known is not None else KeyHistory.empty(lags, scales)
                )
            contexts.append(history.context(event.ts))
            trends.append(history.trend(x, rates, self.input_clip, trend_names) if scales else None)
            history.advance(x, event)
        context_inputs = [
            self._context_inputs(counts, context, trend)
            for counts, context, trend in zip(buckets, contexts, trends, strict=True)
        ]
        return _Walk(events, features, scaled, contexts, context_inputs, histories, rate_after)

    def _context_inputs(
        self, counts: dict[int, float] | None, context: Context, trend: dict[Any, float] | None
    ) -> dict:
        """An event's inputs besides its own features: its buckets, the trend inputs, the gap,
        the previous label and its key's lags."""
        clip = self._clip
        inputs: dict[Any, float] = dict(counts) if counts else {}
        if trend:
            inputs.update(trend)
        if context.gap == context.gap:
            inputs[GAP] = clip(self.gap_scaler.transform_one({"gap": context.gap}))["gap"]
        if context.previous_label is None:
            inputs[NO_PREVIOUS_LABEL] = 1.0
        else:
            inputs[PREVIOUS_LABEL] = 2.0 * context.previous_label - 1.0
        for lag, (lag_features, label) in enumerate(context.lags):
            if lag_features:
                names = self._lag_feature_names[lag]
                for name, value in lag_features.items():
                    input_name = names.get(name)
                    if input_name is None:
                        input_name = names[name] = lag_feature_input(lag + 1, name)
                    inputs[input_name] = value
            if label is not None:
                inputs[self._lag_label_names[lag]] = 2.0 * label - 1.0
        return inputs

    # ------------------------------------------------------------------ keys

    def tracked_keys(self) -> Collection[str]:
        """The keys with a history."""
        return self.histories.keys()

    def export_keys(self, keys: Sequence[str]) -> State:
        """The histories of those of ``keys`` that have one, as data (:func:`histories_to_state`)."""
        wanted = set(keys)
        # In least-recently-seen order, which import_keys keeps.
        return histories_to_state({key: h for key, h in self.histories.items() if key in wanted})

    def import_keys(self, state: State) -> None:
        """Take over the histories of an :meth:`export_keys` (of a model with other lags or
        feature names too: lags beyond ``lags`` and features without a place are left out)."""
        histories = histories_from_state(
            state, "imported key state", self.lags, self.input_clip, scales=self.trend_scales
        )
        bound_feature_names(histories, self.feature_names, self.max_features)
        remember(self.histories, histories.items(), self.max_keys)

    def forget_keys(self, keys: Sequence[str]) -> None:
        """Drop the histories of ``keys``."""
        for key in keys:
            self.histories.pop(key, None)

    def detach_keys(self) -> OrderedDict[str, KeyHistory]:
        """Take out every key's history, leaving none; :meth:`attach_keys` puts them back."""
        histories, self.histories = self.histories, OrderedDict()
        return histories

    def attach_keys(self, histories: OrderedDict[str, KeyHistory]) -> None:
        """Put back what :meth:`detach_keys` took out."""
        self.histories = histories

    # ------------------------------------------------------------------ state

    def non_finite_parts(self) -> list[str]:
        """As the logistic regression's, and the time gap's scaler statistics."""
        parts = super().non_finite_parts()
        gap = self.gap_scaler
        if not all(math.isfinite(v) for v in (*gap.means.values(), *gap.vars.values())):
            parts.append("scaler statistics of the time gap (not finite)")
        return parts

    def to_state(self) -> State:
        """The model as data: the logistic regression's state (its features' and buckets'
        weights), the weights of the context and lag inputs, the gap's scaler and the keys'
        histories."""
        weights = self.classifier._weights
        gap = self.gap_scaler
        return {
            "kind": "logreg_lags",
            "lags": self.lags,
            "max_keys": self.max_keys,
            "logreg": super().to_state(),
            "context_weights": np.array(
                [weights.get(name, 0.0) for name in CONTEXT_INPUTS], dtype=np.float64
            ),
            "lag_label_weights": np.array(
                [weights.get(name, 0.0) for name in self._lag_label_names], dtype=np.float64
            ),
            "lag_feature_weights": weight_table(weights, "lag", range(1, self.lags + 1), lag_feature_input),
            "trend_scales": self.trend_scales,
            "trend_weights": weight_table(weights, "trend", range(self.trend_scales), trend_input),
            "stream_rate_half_life": self.stream_rate.half_life,
            "stream_rate": self.stream_rate.to_state(),
            "gap_scaler": np.array(
                [gap.counts.get("gap", 0), gap.means.get("gap", 0.0), gap.vars.get("gap", 0.0)],
                dtype=np.float64,
            ),
            "key_state": histories_to_state(self.histories),
        }

    @classmethod
    def from_state(cls, tree: Any, where: str) -> LagLogisticRegression:
        """The model of a :meth:`to_state` (:class:`~stream_lstm.errors.CheckpointRejected` if
        ``tree`` is not one)."""
        if isinstance(tree, dict) and "trend_scales" not in tree:  # written before trend inputs
            empty = {"names": [], "values": np.zeros((0, 0))}
            tree = {**tree, "trend_scales": 0, "trend_weights": empty}
        if isinstance(tree, dict) and not {"stream_rate_half_life", "stream_rate"} & tree.keys():
            tree = {**tree, "stream_rate_half_life": 0.0, "stream_rate": NO_STREAM_RATE}  # written before it
        fields = Fields(tree, where, _FIELDS)
        fields.str("kind", choices=("logreg_lags",))
        lags = fields.int("lags")
        scales = fields.int("trend_scales", high=MAX_TREND_SCALES)
        base = LogisticRegressionBaseline.from_state(fields.raw("logreg"), fields.path("logreg"))
        model = cls(
            lags=lags,
            max_keys=fields.int("max_keys", low=1),
            learning_rate=base.learning_rate,
            l2=base.l2,
            max_features=base.max_features,
            input_clip=base.input_clip,
            category_buckets=base.category_buckets,
            trend_scales=scales,
        )
        at = "stream_rate_half_life"
        half_life = checked_by(check_stream_rate_half_life, fields.raw(at), fields.path(at))
        model.stream_rate = StreamRate.from_state(
            fields.raw("stream_rate"), fields.path("stream_rate"), half_life
        )
        model.scaler, model.classifier = base.scaler, base.classifier
        model.feature_names, model.features_dropped = base.feature_names, base.features_dropped
        weights = model.classifier._weights
        context = fields.array("context_weights", "float64", (len(CONTEXT_INPUTS),))
        labels = fields.array("lag_label_weights", "float64", (lags,))
        known = model.feature_names.keys()
        for name, value in zip(CONTEXT_INPUTS, context.tolist(), strict=True):
            weights[name] = value
        for name, value in zip(model._lag_label_names, labels.tolist(), strict=True):
            weights[name] = value
        lag_rows = range(1, lags + 1)
        read_weight_table(fields, "lag_feature_weights", lag_rows, lag_feature_input, known, weights)
        read_weight_table(fields, "trend_weights", range(scales), trend_input, known, weights)
        gap = fields.array("gap_scaler", "float64", (3,))
        count, mean, var = gap.tolist()
        if not (np.isfinite(gap).all() and count >= 0 and count == int(count) and var >= 0):
            raise damaged(fields.path("gap_scaler"), "expected a whole count, a mean and a variance >= 0")
        if count:
            model.gap_scaler.counts["gap"] = int(count)
            model.gap_scaler.means["gap"] = mean
            model.gap_scaler.vars["gap"] = var
        histories = histories_from_state(
            fields.raw("key_state"),
            fields.path("key_state"),
            lags,
            model.input_clip,
            scales=scales,
            strict=True,
        )
        if len(histories) > model.max_keys:
            raise damaged(fields.path("key_state"), "more keys than max_keys")
        check_feature_names(histories, model.feature_names.keys(), fields.path("key_state"))
        model.histories = histories
        return model

    def __getstate__(self) -> dict[str, Any]:
        # The last batch predicted is not state: it only saves work between the two calls.
        return {**super().__getstate__(), "_walked": None}


@dataclass(frozen=True, slots=True)
class _Walk:
    """A batch as :meth:`LagLogisticRegression._walk` found it."""

    events: Sequence[Event]
    #: Each event's features restricted to the names in use, and the same standardised.
    features: list[Mapping[str, float]]
    scaled: list[dict[str, float]]
    contexts: list[Context]
    #: Each event's inputs besides its own features (:meth:`LagLogisticRegression._context_inputs`).
    context_inputs: list[dict[Any, float]]
    #: The batch's keys' histories after the batch, in order of first appearance.
    histories: dict[str, KeyHistory]
    #: The stream rate after the batch.
    rate_after: float


_FIELDS = (
    "kind",
    "lags",
    "max_keys",
    "logreg",
    "context_weights",
    "lag_label_weights",
    "lag_feature_weights",
    "trend_scales",
    "trend_weights",
    "stream_rate_half_life",
    "stream_rate",
    "gap_scaler",
    "key_state",
)
