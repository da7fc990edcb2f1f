"""A batch of events as the LSTM's input vectors: feature layout, column assignment, scaling.

Input vector layout (``max_features + EXTRA_INPUTS + category_buckets`` columns): the scaled
features, each in the column its name was given when first met; the scaled log time gap since the
key's previous event; the key's previous label as -1/+1 (0 when there is none); a flag for "no
previous label"; then one column per category bucket, holding how many of the event's categories
hash to that bucket (two buckets per category:
:func:`~stream_lstm.messages.categories.category_probes`; normally 1.0 in two columns). The bucket
counts are not standardised (they are already of the size of the flags), only clipped to
``input_clip`` like every other input, and they come after the inputs of the versions before them
so that a learner without categories (``category_buckets=0``) has those versions' layout. Last, the
trend inputs (:mod:`stream_lstm.learner.trend`): ``trend_scales`` blocks of ``max_features``
columns, block ``s`` holding each feature's deviation from the key's average at scale ``s``, in
the feature's column of the block (none when ``trend_scales`` is 0, the layout before them).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from stream_lstm.learner.batch_columns import (
    KeyGroups,
    carry_forward,
    category_maps,
    category_rows_and_buckets,
    feature_names,
    feature_values,
    plain_feature_maps,
    timestamps,
)
from stream_lstm.learner.key_state import NO_LABEL, KeyStateStore
from stream_lstm.learner.scaler import RunningScaler
from stream_lstm.learner.trend import trend_deviations
from stream_lstm.messages.events import Event
from stream_lstm.messages.stream_rate import STREAM_RATE_FEATURE, StreamRate

#: Inputs after the features: the log time gap, the previous label, and "no previous label".
EXTRA_INPUTS = 3


def later_input_groups(max_features: int, category_buckets: int, trend_scales: int) -> tuple[int, int]:
    """The sizes of the input groups after the features and :data:`EXTRA_INPUTS`, in layout
    order: the category buckets, then the trend blocks."""
    return category_buckets, trend_scales * max_features


def input_size(max_features: int, category_buckets: int, trend_scales: int) -> int:
    """How many inputs a learner of these settings has."""
    return max_features + EXTRA_INPUTS + sum(later_input_groups(max_features, category_buckets, trend_scales))


class InputEncoding:
    """Turns events into input vectors (a base of the LSTM learner,
    :class:`~stream_lstm.learner.lstm_learner.LSTMLearner`).

    It owns the learner's feature layout: ``feature_columns`` (name to column, the first
    ``max_features`` names met) and ``features_dropped`` (values of names that found no column).
    It reads the key states (``keys``) for each key's previous label and timestamp, and
    standardises with the learner's ``scaler``, whose last column is the log time gap.
    ``_category_inputs_used`` turns true once a bucket column holds a value in an input or a
    stored window (until then the LSTM may leave the bucket columns out, see ``_input_columns``).
    """

    max_features: int
    category_buckets: int
    trend_scales: int
    _trend_rates: np.ndarray
    input_size: int
    input_clip: float
    feature_columns: dict[str, int]
    features_dropped: int
    keys: KeyStateStore
    scaler: RunningScaler
    _category_inputs_used: bool
    stream_rate: StreamRate

    def _encode(
        self, events: Sequence[Event], groups: KeyGroups, slots: np.ndarray, label_values: np.ndarray
    ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        """Build the batch's input vectors on the host (``label_values``: each event's label, NaN
        where it has none).

        Returns the raw values of the columns that can hold any and which columns those are
        (for the scaler update), the inputs, each key's last label, timestamp and trend
        averages after the batch, and the stream rate after it.
        """
        n_features = self.max_features
        raw = np.full((len(events), n_features + 1), np.nan)
        self._fill_features(events, raw)
        rate_after = self._fill_stream_rate(raw, label_values)
        prev_label, last_label = carry_forward(
            label_values, np.isnan(label_values), groups, self.keys.prev_label[slots].astype(np.float64)
        )
        ts = timestamps(events)
        prev_ts, last_ts = carry_forward(ts, np.isnan(ts), groups, self.keys.last_ts[slots])
        # NaN (no gap) where the event or its key's earlier events have no timestamp.
        raw[:, n_features] = np.log1p(np.maximum(ts - prev_ts, 0.0))
        inputs = np.zeros((len(events), self.input_size), dtype=np.float32)
        # Only columns with a feature name (and the time gap) can hold values: the rest scale to 0.
        used = np.array([*sorted(self.feature_columns.values()), n_features], dtype=np.int64)
        raw = raw[:, used]
        inputs[:, used] = self.scaler.transform(raw, used, clip=self.input_clip)
        has_label = prev_label != NO_LABEL
        inputs[:, n_features + 1] = np.where(has_label, 2.0 * prev_label - 1.0, 0.0)
        inputs[:, n_features + 2] = ~has_label
        if self.category_buckets:
            self._fill_categories(events, inputs)
        trend_after = self._fill_trend(inputs, raw, used, groups, slots)
        return (raw, used), inputs, last_label.astype(np.int8), last_ts, trend_after, rate_after

    def _fill_stream_rate(self, raw: np.ndarray, label_values: np.ndarray) -> float:
        """Write each event's stream rate into its feature column of ``raw`` when the rate
        applies (:attr:`~stream_lstm.messages.stream_rate.StreamRate.applies`; the column is
        taken the first time); return the rate after the batch."""
        rate = self.stream_rate
        if not rate.half_life:
            return rate.value
        before, after = rate.before(label_values)
        if rate.applies:
            column = self.feature_columns.get(STREAM_RATE_FEATURE)
            if column is None and len(self.feature_columns) < self.max_features:
                column = self._add_feature_column(STREAM_RATE_FEATURE)
            if column is not None:
                raw[:, column] = before
        return after

    def _fill_trend(
        self, inputs: np.ndarray, raw: np.ndarray, used: np.ndarray, groups: KeyGroups, slots: np.ndarray
    ) -> np.ndarray:
        """Write the trend inputs of the named features into ``inputs``; return the keys' averages
        after the batch (``raw``: the values of the ``used`` scaler columns, NaN where missing)."""
        start = self.keys.trend[slots]
        features = used[:-1]  # the last used column is the time gap's
        if not self.trend_scales or not features.size:
            return start
        deviations, end = trend_deviations(
            inputs[:, features].astype(np.float64),
            ~np.isnan(raw[:, :-1]),
            groups,
            start[:, :, features].astype(np.float64),
            self._trend_rates,
        )
        clip = self.input_clip
        inputs[:, self._trend_columns(features)] = deviations.reshape(len(inputs), -1).clip(-clip, clip)
        start[:, :, features] = end
        return start

    def _trend_columns(self, features: np.ndarray) -> np.ndarray:
        """The input columns of the trend inputs of the feature columns ``features``, scale by
        scale (the order of :func:`~stream_lstm.learner.trend.trend_deviations`'s scales ×
        features)."""
        first = self.max_features + EXTRA_INPUTS + self.category_buckets
        blocks = first + np.arange(self.trend_scales)[:, None] * self.max_features
        return (blocks + features[None, :]).ravel()

    def _fill_features(self, events: Sequence[Event], raw: np.ndarray) -> None:
        """Write each event's features into its row of ``raw``, in their columns (new names get a
        column while there is one free)."""
        columns = self.feature_columns
        maps = plain_feature_maps(events)
        if maps is not None:
            names = feature_names(maps)
            if len(columns) >= self.max_features or names <= columns.keys():
                # The usual batch, with no new names (or no column left for one: any name without
                # a column is dropped): a column at a time.
                for name in names:
                    column = None if name == STREAM_RATE_FEATURE else columns.get(name)
                    if column is not None:
                        raw[:, column] = feature_values(maps, name)
                    else:
                        self.features_dropped += sum(map(dict.__contains__, maps, itertools.repeat(name)))
                return
        # New names take the lowest free columns in order of first appearance.
        for i, event in enumerate(events):
            for name, value in event.features.items():
                column = None if name == STREAM_RATE_FEATURE else columns.get(name)
                if column is None:
                    column = self._add_feature(name)
                    if column is None:
                        self.features_dropped += 1
                        continue
                raw[i, column] = value

    def _fill_categories(self, events: Sequence[Event], inputs: np.ndarray) -> None:
        """Count each event's categories into the bucket columns of its row of ``inputs``."""
        maps = category_maps(events)
        if not any(maps):  # the usual batch: no categories at all
            return
        rows, buckets = category_rows_and_buckets(maps, self.category_buckets)
        counts = inputs[:, self.max_features + EXTRA_INPUTS :]
        np.add.at(counts, (rows, buckets), 1.0)
        # Hundreds of categories of one event may share a bucket: bounded like every input.
        np.minimum(counts, self.input_clip, out=counts)
        self._category_inputs_used = True

    def _add_feature(self, name: str) -> int | None:
        """The column of an event's new feature name (``None``: none is left, or the name is the
        stream rate's, which no event may set)."""
        if len(self.feature_columns) >= self.max_features or name == STREAM_RATE_FEATURE:
            return None
        return self._add_feature_column(name)

    def _add_feature_column(self, name: str) -> int:
        """Give ``name`` the lowest free feature column (imported key states may have taken some
        out of order); there is one."""
        used = set(self.feature_columns.values())
        column = next(c for c in range(self.max_features) if c not in used)
        self.feature_columns[name] = column
        return column
