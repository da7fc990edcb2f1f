"""``logreg``, the baseline that sees what an event holds: river's ``StandardScaler |
LogisticRegression`` on the event's own features (the same bounded set of feature names as the
LSTM's, standardised values clipped as the LSTM's) and its categories (the same hashed buckets as
the LSTM's, one input per bucket, unscaled). ``logreg_lags`` (:mod:`stream_lstm.models.lag_logreg`)
builds on it; ``no_change`` is :mod:`stream_lstm.models.no_change`.

It follows the learner's protocol: :meth:`~LogisticRegressionBaseline.predict_batch` for a
micro-batch uses only what was learned from earlier batches; then
:meth:`~LogisticRegressionBaseline.learn_batch` learns the batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from river import linear_model, optim, preprocessing

from stream_lstm.errors import ConfigError
from stream_lstm.messages.categories import DEFAULT_CATEGORY_BUCKETS, category_probes
from stream_lstm.messages.events import Event
from stream_lstm.messages.stream_rate import STREAM_RATE_FEATURE
from stream_lstm.models.protocols import GuardedModel
from stream_lstm.models.state_data import (
    Fields,
    State,
    checked_array,
    damaged,
)

#: Each event's bucket inputs (bucket to count), or ``None`` for a batch without categories.
_Buckets = list[dict[int, float]] | None


class LogisticRegressionBaseline(GuardedModel):
    """River's standard scaler and logistic regression, learning one event at a time.

    It sees what the LSTM sees of the features: the first ``max_features`` distinct names, in
    order of first appearance in the batches predicted (labelled or not), exactly the LSTM's rule;
    values of later names are dropped and counted (:meth:`guard_stats`), so its state is bounded
    by ``max_features`` whatever the stream holds. Standardised values are clipped to
    ``[-input_clip, input_clip]``, as the LSTM's inputs are, so that no accepted value (finite,
    at most 1e18 in size) can make a weight or a probability non-finite.

    Categories get the LSTM's inputs too: each (name, value) pair counts 1 in the inputs of its two
    buckets among ``category_buckets`` (:func:`~stream_lstm.messages.categories.category_probes`),
    so an event with one category has a two-hot bucket input. The count is not standardised (the
    LSTM's is not either) and is clipped to ``input_clip``. A bucket's input is named by the
    integer of the bucket, which no feature name (always a string) can be.

    Parameters
    ----------
    learning_rate
        Step size of river's SGD optimizer.
    l2
        L2 regularisation.
    max_features
        How many distinct feature names are used (the LSTM's ``max_features``).
    input_clip
        The bound of the standardised features (the LSTM's ``input_clip``).
    category_buckets
        How many inputs the categories are hashed into (the LSTM's ``category_buckets``); 0:
        categories are ignored.

    Examples
    --------
    >>> model = LogisticRegressionBaseline(max_features=1)
    >>> batch = [Event(features={"x": 1.0}, label=1), Event(features={"x": -1.0, "y": 2.0}, label=0)]
    >>> model.predict_batch(batch).tolist()
    [0.5, 0.5]
    >>> model.learn_batch(batch)
    >>> list(model.feature_names), model.guard_stats()
    (['x'], {'features_dropped': 1})
    >>> model.learn_batch([Event(categories={"colour": "red"}, label=1)])
    >>> sorted(name for name in model.classifier._weights if isinstance(name, int)) == sorted(
    ...     category_probes("colour", "red", model.category_buckets)
    ... )
    True
    """

    # Class defaults: baselines unpickled from checkpoints written before these existed use them.
    max_features = 32
    input_clip = 10.0
    features_dropped = 0
    category_buckets = 0

    def __init__(
        self,
        *,
        learning_rate: float = 0.01,
        l2: float = 0.0,
        max_features: int = 32,
        input_clip: float = 10.0,
        category_buckets: int = DEFAULT_CATEGORY_BUCKETS,
    ) -> None:
        if not learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {learning_rate!r}")
        if not isinstance(max_features, int) or max_features < 1:
            raise ConfigError(f"max_features must be a positive integer, got {max_features!r}")
        if not (isinstance(input_clip, (int, float)) and 0 < input_clip < math.inf):
            raise ConfigError(f"input_clip must be a finite number > 0, got {input_clip!r}")
        if (
            isinstance(category_buckets, bool)
            or not isinstance(category_buckets, int)
            or category_buckets < 0
        ):
            raise ConfigError(f"category_buckets must be a non-negative integer, got {category_buckets!r}")
        self.learning_rate = learning_rate
        self.l2 = l2
        self.max_features = max_features
        self.input_clip = float(input_clip)
        self.category_buckets = category_buckets
        # The two steps of river's `StandardScaler | LogisticRegression`, called directly: the
        # same computation as the pipeline, without its per-call dispatch.
        self.scaler = preprocessing.StandardScaler()
        self.classifier = linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate), l2=l2)
        #: The feature names in use, in order of first appearance (values unused).
        self.feature_names: dict[str, None] = {}
        self.features_dropped = 0
        # The last batch predicted, its features restricted to feature_names and its bucket
        # inputs, for learn_batch.
        self._predicted: tuple[Sequence[Event], list[Mapping[str, float]], _Buckets] | None = None

    def predict_batch(self, events: Sequence[Event]) -> np.ndarray:
        """Probability of label 1 for each event, from the weights before this batch."""
        features, buckets = self._bounded(events), self._bucket_inputs(events)
        self._predicted = (events, features, buckets)
        transform, clip = self.scaler.transform_one, self._clip
        predict = self.classifier.predict_proba_one
        if buckets is None:  # the usual batch: no categories
            probabilities = np.array([predict(clip(transform(x))).get(True, 0.5) for x in features])
        else:
            probabilities = np.array(
                [
                    predict({**clip(transform(x)), **counts}).get(True, 0.5)
                    for x, counts in zip(features, buckets, strict=True)
                ]
            )
        finite = np.isfinite(probabilities)
        if not finite.all():  # no accepted input leads here; a NaN must never be a prediction
            probabilities[~finite] = 0.5
        return probabilities

    def learn_batch(self, events: Sequence[Event]) -> None:
        """Learn each labelled event in order (the scaler first, as the river pipeline does)."""
        predicted, self._predicted = self._predicted, None
        if predicted is not None and predicted[0] is events:
            _, features, buckets = predicted
        else:
            features, buckets = self._bounded(events), self._bucket_inputs(events)
        scaler, learn, clip = self.scaler, self.classifier.learn_one, self._clip
        for event, x, counts in zip(
            events, features, buckets or itertools.repeat(None, len(events)), strict=True
        ):
            if event.label is not None:
                scaler.learn_one(x)
                inputs = clip(scaler.transform_one(x))
                learn({**inputs, **counts} if counts else inputs, bool(event.label))

    def _bounded(self, events: Sequence[Event]) -> list[Mapping[str, float]]:
        """Each event's features restricted to the names in use, new names taking a place while
        there is one (the LSTM's rule: in order of first appearance in the batch)."""
        known = self.feature_names
        keys = known.keys()
        out: list[Mapping[str, float]] = []
        dropped = 0
        for event in events:
            features = event.features
            if features.keys() <= keys and STREAM_RATE_FEATURE not in features:  # every name known
                out.append(features)
                continue
            kept = {}
            for name, value in features.items():
                if name == STREAM_RATE_FEATURE:  # reserved: the rate is the models' own
                    dropped += 1
                    continue
                if name not in known:
                    if len(known) >= self.max_features:
                        dropped += 1
                        continue
                    known[name] = None
                kept[name] = value
            out.append(kept)
        self.features_dropped += dropped
        return out

    def _bucket_inputs(self, events: Sequence[Event]) -> _Buckets:
        """Each event's bucket inputs (bucket to its count of the event's categories, clipped to
        ``input_clip``); ``None`` when no event of the batch has a category (or there are no
        buckets)."""
        buckets = self.category_buckets
        if not buckets or not any(event.categories for event in events):
            return None
        out: list[dict[int, float]] = []
        for event in events:
            counts: dict[int, float] = {}
            for name, value in event.categories.items():
                for bucket in category_probes(name, value, buckets):
                    counts[bucket] = min(counts.get(bucket, 0.0) + 1.0, self.input_clip)
            out.append(counts)
        return out

    def _clip(self, scaled: dict[str, float]) -> dict[str, float]:
        """Standardised features clipped to ``[-input_clip, input_clip]`` (a NaN, which river's
        scaler never returns for finite values, to 0)."""
        c = self.input_clip
        values = scaled.values()
        # Three passes in C instead of a generator (this runs for every event, twice): min and
        # max skip a NaN where it is not first, the sum does not (it is NaN then).
        if not values or (-c <= min(values) and max(values) <= c and (total := sum(values)) == total):
            return scaled
        return {
            name: value if -c <= value <= c else c if value > c else -c if value < -c else 0.0
            for name, value in scaled.items()
        }

    def guard_stats(self) -> dict[str, int]:
        """Feature values dropped so far for names past ``max_features`` (kept in checkpoints)."""
        return {"features_dropped": self.features_dropped}

    def non_finite_parts(self) -> list[str]:
        """The parts of the state that hold non-finite values (empty when none does): weights,
        intercept, scaler means and variances. A checkpoint holding any is refused."""
        parts = []
        named = (
            ("weights", self.classifier._weights.items()),
            ("scaler means", self.scaler.means.items()),
            ("scaler variances", self.scaler.vars.items()),
        )
        for what, items in named:
            items = list(items)
            bad = [name for name, value in items if not _finite_number(value)]
            if bad:
                shown = ", ".join(repr(name) for name in bad[:3]) + (", ..." if len(bad) > 3 else "")
                parts.append(f"{what} of features {shown} ({len(bad):,} of {len(items):,} values not finite)")
        if not _finite_number(self.classifier.intercept):
            parts.append("intercept (not finite)")
        return parts

    def to_state(self) -> State:
        """The model as data (:mod:`stream_lstm.models.state_data`): settings, the feature names
        in use, river's scaler statistics, the weights of the features and of the category
        buckets, intercept and optimizer step count."""
        scaler, classifier = self.scaler, self.classifier
        weights = dict(classifier._weights.items())
        # Buckets are named by integers (a subclass may name inputs of its own otherwise).
        bucket_weights = {name: value for name, value in weights.items() if isinstance(name, int)}
        return {
            "kind": "logreg",
            "learning_rate": self.learning_rate,
            "l2": self.l2,
            "max_features": self.max_features,
            "input_clip": self.input_clip,
            "category_buckets": self.category_buckets,
            "feature_names": list(self.feature_names),
            "features_dropped": self.features_dropped,
            "scaler_counts": _named_values(scaler.counts, np.int64),
            "scaler_means": _named_values(scaler.means, np.float64),
            "scaler_vars": _named_values(scaler.vars, np.float64),
            "weights": _named_values(
                {name: value for name, value in weights.items() if isinstance(name, str)}, np.float64
            ),
            "category_weights": {
                "buckets": np.fromiter(bucket_weights, dtype=np.int64, count=len(bucket_weights)),
                "values": np.fromiter(bucket_weights.values(), dtype=np.float64, count=len(bucket_weights)),
            },
            "intercept": np.array(classifier.intercept, dtype=np.float64),  # the finite check reads it
            "optimizer_iterations": int(classifier.optimizer.n_iterations),
        }

    @classmethod
    def from_state(cls, tree: Any, where: str) -> LogisticRegressionBaseline:
        """The model of a :meth:`to_state` (:class:`~stream_lstm.errors.CheckpointRejected` if
        ``tree`` is not one; one written before categorical features is a model without them)."""
        if isinstance(tree, dict) and "category_buckets" not in tree and "category_weights" not in tree:
            tree = {**tree, "category_buckets": 0, "category_weights": _NO_CATEGORY_WEIGHTS}
        fields = Fields(tree, where, _LOGREG_FIELDS)
        fields.str("kind", choices=("logreg",))
        model = cls(
            learning_rate=fields.float("learning_rate", low=math.ulp(0.0)),
            l2=fields.float("l2", low=0.0),
            max_features=fields.int("max_features", low=1),
            input_clip=fields.float("input_clip", low=math.ulp(0.0)),
            category_buckets=fields.int("category_buckets"),
        )
        names = fields.strings("feature_names")
        if len(names) > model.max_features:
            raise damaged(fields.path("feature_names"), "more names than max_features")
        model.feature_names = dict.fromkeys(names)
        model.features_dropped = fields.int("features_dropped")
        counts = _values_from_state(fields, "scaler_counts", "int64")
        if any(count < 0 for count in counts.values()):
            raise damaged(fields.path("scaler_counts"), "a count is negative")
        model.scaler.counts.update(counts)
        model.scaler.means.update(_values_from_state(fields, "scaler_means", "float64"))
        model.scaler.vars.update(_values_from_state(fields, "scaler_vars", "float64"))
        weights = model.classifier._weights
        for name, value in _values_from_state(fields, "weights", "float64").items():
            weights[name] = value
        for bucket, value in _bucket_weights_from_state(fields, model.category_buckets).items():
            weights[bucket] = value
        model.classifier.intercept = float(fields.array("intercept", "float64", ()))
        model.classifier.optimizer.n_iterations = fields.int("optimizer_iterations")
        return model

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Only the conversion of a checkpoint of the old pickle format unpickles a model.
        self.__dict__.update(state)
        if "feature_names" not in state:
            # Written before the feature set was bounded: keep the first max_features names the
            # scaler learned (in order of first appearance) and forget the others' statistics and
            # weights, so that an old checkpoint is bounded like a new one.
            names = list(dict.fromkeys([*self.scaler.counts, *self.scaler.means]))
            self.feature_names = dict.fromkeys(names[: self.max_features])
            for name in names[self.max_features :]:
                for table in (self.scaler.counts, self.scaler.means, self.scaler.vars):
                    table.pop(name, None)
                self.classifier._weights.pop(name, None)
            self._predicted = None

    def __getstate__(self) -> dict[str, Any]:
        # The last batch predicted is not state: it only saves work between the two calls.
        return {**self.__dict__, "_predicted": None}


_LOGREG_FIELDS = (
    "kind",
    "learning_rate",
    "l2",
    "max_features",
    "input_clip",
    "category_buckets",
    "feature_names",
    "features_dropped",
    "scaler_counts",
    "scaler_means",
    "scaler_vars",
    "weights",
    "category_weights",
    "intercept",
    "optimizer_iterations",
)


#: The bucket weights of a model without any (a checkpoint written before categorical features).
_NO_CATEGORY_WEIGHTS = {"buckets": np.zeros(0, dtype=np.int64), "values": np.zeros(0, dtype=np.float64)}


def _named_values(values: Mapping[str, Any], dtype: type) -> State:
    """A mapping of names to numbers as data: the names in order, the numbers as an array (where
    a non-finite one is kept, for the finite check to find)."""
    return {"names": list(values), "values": np.fromiter(values.values(), dtype=dtype, count=len(values))}


def _values_from_state(fields: Fields, name: str, dtype: str) -> dict[str, Any]:
    """Read back :func:`_named_values` (plain Python numbers, as river keeps them)."""
    inner = fields.nested(name, ("names", "values"))
    names = inner.strings("names")
    values = checked_array(inner.raw("values"), inner.path("values"), dtype, (len(names),))
    return dict(zip(names, values.tolist(), strict=True))


def _bucket_weights_from_state(fields: Fields, buckets: int) -> dict[int, float]:
    """Read back the weights of the category buckets: distinct buckets below ``buckets``."""
    inner = fields.nested("category_weights", ("buckets", "values"))
    found = inner.array("buckets", "int64", (None,))
    values = inner.array("values", "float64", found.shape)
    if ((found < 0) | (found >= buckets)).any():
        raise damaged(inner.path("buckets"), f"a bucket is not in [0, {buckets})")
    if np.unique(found).size != found.size:
        raise damaged(inner.path("buckets"), "holds a bucket twice")
    return dict(zip(found.tolist(), values.tolist(), strict=True))


def _finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite number (anything that is no number is not checked here)."""
    try:
        return math.isfinite(value)
    except TypeError:
        return True
