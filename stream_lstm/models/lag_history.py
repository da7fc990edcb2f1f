"""What ``logreg_lags`` keeps of each key, and that as data: the key's latest label and
timestamp, its last events (standardised features and label), newest first, and its averages of
each standardised feature for the trend inputs (as the LSTM's, :mod:`stream_lstm.learner.trend`).

A module of its own because the history is read in two places: by the model
(:mod:`stream_lstm.models.lag_logreg`), and by the checks of a partition checkpoint
(:mod:`stream_lstm.state.state_tree`), which need the state's shape but not river.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_lstm.messages.events import MAX_ABS_VALUE, Event
from stream_lstm.messages.trend_scales import MAX_TREND_SCALES
from stream_lstm.models.state_data import Fields, State, damaged

#: ``previous_label`` and a lag's label in a state, for none.
NO_LABEL = -1


#: One earlier event of a key: its standardised features (the names in use) and its label.
Lag = tuple[Mapping[str, float], int | None]


def trend_input(scale: int, name: str) -> tuple[str, int, str]:
    """The input name of the trend input of feature ``name`` at ``scale`` (from 0)."""
    return ("trend", scale, name)


@dataclass(slots=True)
class KeyHistory:
    """What is kept of one key: its latest label, its latest timestamp (NaN: none yet), its
    latest events, newest first, and per trend scale its average of each standardised feature
    (a feature without one has the average 0)."""

    previous_label: int | None
    last_ts: float
    lags: deque[Lag]
    averages: list[dict[str, float]]

    @classmethod
    def empty(cls, lags: int, scales: int = 0) -> KeyHistory:
        return cls(None, math.nan, deque(maxlen=lags), [{} for _ in range(scales)])

    def copy(self) -> KeyHistory:
        return KeyHistory(
            self.previous_label,
            self.last_ts,
            deque(self.lags, maxlen=self.lags.maxlen),
            [dict(average) for average in self.averages],
        )

    def trend(
        self,
        features: Mapping[str, float],
        rates: list[float],
        clip: float,
        input_names: list[dict[str, tuple[str, int, str]]],
    ) -> dict[Any, float]:
        """The trend inputs of an event with the standardised ``features``: each one's deviation
        from the key's average at each scale (clipped to ``clip``); the averages then move
        towards it by each scale's rate. A missing feature has no input and moves no average.
        ``input_names``: per scale, the input name of each feature (:func:`trend_input`), filled
        in here as names come (built once, looked up per event: this runs for every event)."""
        inputs: dict[Any, float] = {}
        for scale, (rate, average, names) in enumerate(zip(rates, self.averages, input_names, strict=True)):
            get = average.get
            for name, value in features.items():
                old = get(name, 0.0)
                deviation = value - old
                average[name] = old + rate * deviation
                input_name = names.get(name)
                if input_name is None:
                    input_name = names[name] = trend_input(scale, name)
                if deviation > clip:
                    deviation = clip
                elif deviation < -clip:
                    deviation = -clip
                inputs[input_name] = deviation
        return inputs

    def context(self, ts: float | None) -> Context:
        """What an event at ``ts`` sees of the key's past (the gap is NaN without both times)."""
        gap = math.nan
        if ts is not None and ts == ts and self.last_ts == self.last_ts:  # NaN: no time (as the LSTM's)
            gap = math.log1p(max(float(ts) - self.last_ts, 0.0))
        return Context(self.previous_label, gap, tuple(self.lags))

    def advance(self, features: Mapping[str, float], event: Event) -> None:
        """Move the key past ``event`` (``features``: its standardised features, as predicted from)."""
        if event.label is not None:
            self.previous_label = event.label
        if event.ts is not None and event.ts == event.ts:
            self.last_ts = float(event.ts)
        self.lags.appendleft((features, event.label))


@dataclass(frozen=True, slots=True)
class Context:
    """What the prediction of one event takes from earlier events of its key."""

    previous_label: int | None
    #: ``log1p`` of the seconds since the key's latest earlier timestamp; NaN when there is none.
    gap: float
    lags: tuple[Lag, ...]


_HISTORY_FIELDS = (
    "keys",
    "previous_label",
    "last_ts",
    "lag_counts",
    "lag_labels",
    "lag_feature_counts",
    "feature_names",
    "lag_feature_index",
    "lag_feature_values",
    "trend_counts",
    "trend_scale",
    "trend_index",
    "trend_values",
)


def histories_to_state(histories: Mapping[str, KeyHistory]) -> State:
    """Key histories as data, in their order: per key its latest label (``NO_LABEL`` for none),
    latest timestamp (NaN for none) and number of lags; per lag (newest first, key by key) its
    label and number of features; per lag feature the index of its name in ``feature_names`` and
    its value; per key its number of trend averages, and per average its scale, the index of its
    feature's name and its value."""
    names: dict[str, int] = {}
    previous, last_ts, lag_counts, lag_labels, feature_counts = [], [], [], [], []
    feature_index: list[int] = []
    feature_values: list[float] = []
    trend_counts: list[int] = []
    trend_scale: list[int] = []
    trend_index: list[int] = []
    trend_values: list[float] = []
    for history in histories.values():
        trend_counts.append(sum(map(len, history.averages)))
        for scale, average in enumerate(history.averages):
            for name, value in average.items():
                trend_scale.append(scale)
                trend_index.append(names.setdefault(name, len(names)))
                trend_values.append(value)
        previous.append(NO_LABEL if history.previous_label is None else history.previous_label)
        last_ts.append(history.last_ts)
        lag_counts.append(len(history.lags))
        for features, label in history.lags:
            lag_labels.append(NO_LABEL if label is None else label)
            feature_counts.append(len(features))
            for name, value in features.items():
                feature_index.append(names.setdefault(name, len(names)))
                feature_values.append(value)
    return {
        "keys": list(histories),
        "previous_label": np.array(previous, dtype=np.int8),
        "last_ts": np.array(last_ts, dtype=np.float64),
        "lag_counts": np.array(lag_counts, dtype=np.int64),
        "lag_labels": np.array(lag_labels, dtype=np.int8),
        "lag_feature_counts": np.array(feature_counts, dtype=np.int64),
        "feature_names": list(names),
        "lag_feature_index": np.array(feature_index, dtype=np.int64),
        "lag_feature_values": np.array(feature_values, dtype=np.float64),
        "trend_counts": np.array(trend_counts, dtype=np.int64),
        "trend_scale": np.array(trend_scale, dtype=np.int64),
        "trend_index": np.array(trend_index, dtype=np.int64),
        "trend_values": np.array(trend_values, dtype=np.float64),
    }


def check_histories_state(tree: Any, where: str) -> State:
    """A :func:`histories_to_state` read from a checkpoint, checked to be consistent in itself
    (:class:`~stream_lstm.errors.CheckpointRejected` otherwise). One written before trend inputs
    reads as one without averages."""
    if isinstance(tree, dict) and "trend_counts" not in tree and isinstance(tree.get("keys"), list):
        none = np.zeros(0, dtype=np.int64)
        tree = {
            **tree,
            "trend_counts": np.zeros(len(tree["keys"]), dtype=np.int64),
            "trend_scale": none,
            "trend_index": none,
            "trend_values": np.zeros(0, dtype=np.float64),
        }
    fields = Fields(tree, where, _HISTORY_FIELDS)
    keys = fields.strings("keys")
    previous = fields.array("previous_label", "int8", (len(keys),))
    last_ts = fields.array("last_ts", "float64", (len(keys),))
    lag_counts = fields.array("lag_counts", "int64", (len(keys),))
    if (lag_counts < 0).any():
        raise damaged(fields.path("lag_counts"), "a count is negative")
    n_lags = sum(lag_counts.tolist())  # Python integers: a crafted count cannot wrap around
    lag_labels = fields.array("lag_labels", "int8", (n_lags,))
    feature_counts = fields.array("lag_feature_counts", "int64", (n_lags,))
    if (feature_counts < 0).any():
        raise damaged(fields.path("lag_feature_counts"), "a count is negative")
    names = fields.strings("feature_names")
    n_features = sum(feature_counts.tolist())
    index = fields.array("lag_feature_index", "int64", (n_features,))
    values = fields.array("lag_feature_values", "float64", (n_features,))
    for name, labels in (("previous_label", previous), ("lag_labels", lag_labels)):
        if ((labels < NO_LABEL) | (labels > 1)).any():
            raise damaged(fields.path(name), f"a label is not {NO_LABEL}, 0 or 1")
    if (np.abs(last_ts) > MAX_ABS_VALUE).any():  # NaN (no timestamp) compares false
        raise damaged(fields.path("last_ts"), f"a timestamp is infinite or beyond {MAX_ABS_VALUE:g}")
    if ((index < 0) | (index >= len(names))).any():
        raise damaged(fields.path("lag_feature_index"), "an index is not that of a feature name")
    if not (np.abs(values) <= MAX_ABS_VALUE).all():
        raise damaged(fields.path("lag_feature_values"), f"a value is not finite or beyond {MAX_ABS_VALUE:g}")
    trend_counts = fields.array("trend_counts", "int64", (len(keys),))
    if (trend_counts < 0).any():
        raise damaged(fields.path("trend_counts"), "a count is negative")
    n_averages = sum(trend_counts.tolist())
    trend_scale = fields.array("trend_scale", "int64", (n_averages,))
    trend_index = fields.array("trend_index", "int64", (n_averages,))
    trend_values = fields.array("trend_values", "float64", (n_averages,))
    if ((trend_scale < 0) | (trend_scale >= MAX_TREND_SCALES)).any():
        raise damaged(fields.path("trend_scale"), f"a scale is not from 0 to {MAX_TREND_SCALES - 1}")
    if ((trend_index < 0) | (trend_index >= len(names))).any():
        raise damaged(fields.path("trend_index"), "an index is not that of a feature name")
    if not (np.abs(trend_values) <= MAX_ABS_VALUE).all():
        raise damaged(fields.path("trend_values"), f"a value is not finite or beyond {MAX_ABS_VALUE:g}")
    return {
        "keys": keys,
        "previous_label": previous,
        "last_ts": last_ts,
        "lag_counts": lag_counts,
        "lag_labels": lag_labels,
        "lag_feature_counts": feature_counts,
        "feature_names": names,
        "lag_feature_index": index,
        "lag_feature_values": values,
        "trend_counts": trend_counts,
        "trend_scale": trend_scale,
        "trend_index": trend_index,
        "trend_values": trend_values,
    }


def histories_from_state(
    tree: Any, where: str, lags: int, input_clip: float, *, scales: int = 0, strict: bool = False
) -> OrderedDict[str, KeyHistory]:
    """The key histories of a :func:`histories_to_state`, each with at most ``lags`` lags (the
    newest; ``strict``: more is damage) and the averages of ``scales`` trend scales (those of
    other scales are left out; ``strict``: they are damage). Checked first
    (:func:`check_histories_state`); a lag's value or an average beyond ``input_clip`` is damage
    (both hold standardised features, clipped)."""
    state = check_histories_state(tree, where)
    for name in ("lag_feature_values", "trend_values"):
        if not (np.abs(state[name]) <= input_clip).all():
            raise damaged(f"{where}.{name}", f"a value is beyond the input clip {input_clip:g}")
    if strict and (state["trend_scale"] >= scales).any():
        raise damaged(f"{where}.trend_scale", f"an average of a scale past the {scales} trend scales")
    lag_counts = state["lag_counts"]
    if strict and (lag_counts > lags).any():
        raise damaged(f"{where}.lag_counts", f"a key holds more than {lags} lags")
    names = state["feature_names"]
    index = state["lag_feature_index"].tolist()
    values = state["lag_feature_values"].tolist()
    labels = state["lag_labels"].tolist()
    feature_counts = state["lag_feature_counts"].tolist()
    timestamps = state["last_ts"].tolist()
    trend_counts = state["trend_counts"].tolist()
    trend_scale = state["trend_scale"].tolist()
    trend_names = [names[i] for i in state["trend_index"].tolist()]
    trend_values = state["trend_values"].tolist()
    histories: OrderedDict[str, KeyHistory] = OrderedDict()
    lag_at = feature_at = trend_at = 0
    previous_labels = state["previous_label"].tolist()
    for key, previous, last_ts, count, n_averages in zip(
        state["keys"], previous_labels, timestamps, lag_counts.tolist(), trend_counts, strict=True
    ):
        averages: list[dict[str, float]] = [{} for _ in range(scales)]
        for at in range(trend_at, trend_at + n_averages):
            if trend_scale[at] < scales:
                averages[trend_scale[at]][trend_names[at]] = trend_values[at]
        trend_at += n_averages
        label = None if previous == NO_LABEL else previous
        history = KeyHistory(label, last_ts, deque(maxlen=lags), averages)
        for lag in range(count):
            n = feature_counts[lag_at]
            end = feature_at + n
            features = dict(
                zip([names[i] for i in index[feature_at:end]], values[feature_at:end], strict=True)
            )
            if len(features) != n:
                raise damaged(f"{where}.lag_feature_index", "a lag holds a feature twice")
            if lag < lags:
                history.lags.append((features, None if labels[lag_at] == NO_LABEL else labels[lag_at]))
            lag_at += 1
            feature_at = end
        histories[key] = history
    return histories


def bound_feature_names(
    histories: Mapping[str, KeyHistory], known: dict[Any, None], max_features: int
) -> None:
    """Give the feature names of imported ``histories`` a place among ``known`` while there is one
    (at most ``max_features``), and leave out of the histories the names that found none."""
    for history in histories.values():
        for average in history.averages:
            for name in [n for n in average if n not in known]:
                if len(known) < max_features:
                    known[name] = None
                else:
                    del average[name]
        for index, (features, label) in enumerate(history.lags):
            if not features.keys() <= known.keys():
                for name in features:
                    if name not in known and len(known) < max_features:
                        known[name] = None
                history.lags[index] = ({n: v for n, v in features.items() if n in known}, label)


def check_feature_names(histories: Mapping[str, KeyHistory], known: Collection[Any], where: str) -> None:
    """Refuse (:class:`~stream_lstm.errors.CheckpointRejected`) stored ``histories`` whose lags or
    averages hold a feature that is not among the ``known`` names of their model."""
    for history in histories.values():
        for features, _ in history.lags:
            if not features.keys() <= known:
                raise damaged(where, "a lag holds a feature that is not in use")
        for average in history.averages:
            if not average.keys() <= known:
                raise damaged(where, "an average is of a feature that is not in use")
