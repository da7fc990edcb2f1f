"""The stream rate: the moving average of the labels of all keys' earlier events, a feature that
the LSTM and ``logreg_lags`` add themselves (the same for both, which must get the same inputs).

A key's state holds only its own events. What the stream as a whole showed a moment ago (a time of
day, a regime that all keys share) reaches a model at batch 64 only through an input like this
one: per-event learning (batch 1) keeps it in its weights, which change after every event, but at
batch 64 a prediction has weights from before its batch (docs/evaluation.md, "The quality suite",
and ``benchmarks/bench_cross_key.py``).

The value for an event is the rate before it: the exponential moving average, with a half-life
of ``half_life`` labelled events, of the labels of the events before it in stream order (those of
its own batch included, as the previous label is); 0.5 before the first label. An event without
a label leaves it as it is. A model gives it as the feature :data:`STREAM_RATE_FEATURE`
(standardised, with trend inputs and lags, as any feature) from the batch after the first one it
learns that holds a second key (:attr:`StreamRate.keyed`): in a stream of one key it would
only repeat that key's own labels, which the model sees anyway, and it slows learning there (the
quality benchmark). Here, without torch or river, because the settings, the learner, the
baseline and the checkpoint readers all read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from stream_lstm.errors import CheckpointRejected, ConfigError

#: The half-life of the stream rate, in labelled events, unless told otherwise (0: no stream rate):
#: chosen on the quality suite (docs/evaluation.md, "The quality suite": 7 and 28 came within
#: 0.0007 of its mean log loss).
DEFAULT_STREAM_RATE_HALF_LIFE = 14.0

#: The longest half-life (``--stream-rate-half-life``), in labelled events.
MAX_STREAM_RATE_HALF_LIFE = 1_000_000.0

#: The stream rate before any label.
START_RATE = 0.5

#: The feature name under which a model gives the stream rate (it takes a feature column, or a
#: place among the ``max_features`` names, like any feature: the first time it applies, after
#: the batch's own features). The name is reserved: every model drops an event's feature of this
#: name (counted as dropped), so that no producer can write into the rate's statistics.
STREAM_RATE_FEATURE = "<stream rate>"


def check_stream_rate_half_life(value: Any) -> float:
    """``value`` as a float if it is 0 (no stream rate) or a half-life from 1 to
    :data:`MAX_STREAM_RATE_HALF_LIFE` events, else :class:`~stream_lstm.errors.ConfigError` (a
    ``ValueError``, as a setting's parser raises)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value == 0 or 1 <= value <= MAX_STREAM_RATE_HALF_LIFE)
    ):
        raise ConfigError(
            "stream_rate_half_life must be 0 (no stream rate) or a number of events from 1 to "
            f"{MAX_STREAM_RATE_HALF_LIFE:,.0f}, got {value!r}"
        )
    return float(value)


class StreamRate:
    """A model's stream rate: its value now, its values before each event of a batch, and
    whether the model gives it (:attr:`applies`).

    :meth:`before` changes nothing; the model calls :meth:`learned` when it learns a batch (not an
    empty one), so that a batch predicted and not learned leaves it as it was.
    """

    __slots__ = ("_step", "first_key", "half_life", "keyed", "value")

    def __init__(
        self,
        half_life: float,
        value: float = START_RATE,
        *,
        keyed: bool = False,
        first_key: str | None = None,
    ) -> None:
        self.half_life = check_stream_rate_half_life(half_life)
        self.value = value
        #: Whether the model has learned events of more than one key (it stays so).
        self.keyed = keyed
        #: The key of the first event learned, until the model is keyed (then ``None``).
        self.first_key = None if keyed else first_key
        # Each label moves the rate this share of the way towards it.
        self._step = 1.0 - 0.5 ** (1.0 / self.half_life) if self.half_life else 0.0

    def before(self, labels: list[int | None] | np.ndarray) -> tuple[np.ndarray, float]:
        """The rate before each event whose labels are ``labels`` (``None`` or NaN: no label), in
        order, and the rate after them all.

        >>> rate = StreamRate(1.0)
        >>> before, after = rate.before([1, None, 0])
        >>> before.tolist(), after
        ([0.5, 0.75, 0.75], 0.375)
        """
        values = labels.tolist() if isinstance(labels, np.ndarray) else labels
        out: list[float] = []
        keep = out.append  # a list, then one array: item writes into an array cost more
        rate, step = self.value, self._step
        for label in values:
            keep(rate)
            if label is not None and label == label:  # NaN: no label
                rate += step * (label - rate)
        return np.array(out, dtype=np.float64), rate

    @property
    def applies(self) -> bool:
        """Whether the model gives its events the rate: it has one, and its stream is keyed."""
        return bool(self.half_life) and self.keyed

    def learned(self, rate: float, keys: Iterable[str]) -> None:
        """Take the rate after a batch the model learned (the second value of :meth:`before`),
        whose events have ``keys``: the model is keyed from the first learned batch that holds a
        key other than the first one it learned."""
        self.value = rate
        if self.keyed:
            return
        keys = keys if isinstance(keys, list) else list(keys)
        if not keys:
            return
        if self.first_key is None:
            self.first_key = keys[0]
        if keys.count(self.first_key) != len(keys):  # a key other than the first
            self.keyed, self.first_key = True, None

    def to_state(self) -> dict[str, Any]:
        """The rate as data (the half-life is the model's setting, stored with the others)."""
        return {"rate": self.value, "keyed": self.keyed, "first_key": self.first_key}

    @classmethod
    def from_state(cls, tree: Any, where: str, half_life: float) -> StreamRate:
        """The rate of a :meth:`to_state` of a model with ``half_life``;
        :class:`CheckpointRejected` if ``tree`` is not one."""
        if not isinstance(tree, dict) or set(tree) != {"rate", "keyed", "first_key"}:
            raise CheckpointRejected(f"{where}: expected a mapping of rate, keyed and first_key", "damaged")
        keyed, first_key = tree["keyed"], tree["first_key"]
        if not isinstance(keyed, bool):
            raise CheckpointRejected(f"{where}.keyed: expected true or false", "damaged")
        if not (first_key is None or (isinstance(first_key, str) and not keyed)):
            raise CheckpointRejected(
                f"{where}.first_key: expected a key before the stream is keyed", "damaged"
            )
        rate = _checked_rate(tree["rate"], f"{where}.rate")
        return cls(half_life, rate, keyed=keyed, first_key=first_key)


#: The stream rate of a model written before it (no stream rate).
NO_STREAM_RATE = StreamRate(0.0).to_state()


def with_stream_rate(
    features: list[Mapping[str, float]], rates: np.ndarray, names: dict[Any, None], max_features: int
) -> list[Mapping[str, float]]:
    """Each event's ``features`` with its stream rate (``rates``) added as
    :data:`STREAM_RATE_FEATURE`, for a model that bounds its feature names in ``names`` to
    ``max_features`` (the name takes a place there the first time, as a feature column of the
    LSTM; when none is left, ``features`` as they are)."""
    if STREAM_RATE_FEATURE not in names:
        if len(names) >= max_features:
            return features
        names[STREAM_RATE_FEATURE] = None
    return [{**x, STREAM_RATE_FEATURE: rate} for x, rate in zip(features, rates.tolist(), strict=True)]


def _checked_rate(value: Any, where: str) -> float:
    """A stream rate read from a checkpoint at ``where`` (:class:`CheckpointRejected` unless it is
    a number from 0 to 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        shown = repr(value)[:40]
        raise CheckpointRejected(f"{where}: expected a stream rate from 0 to 1, got {shown}", "damaged")
    return float(value)
