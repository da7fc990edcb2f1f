"""River's rows as events: a feature dict ``x`` (or a DataFrame's rows) and a label ``y``.

River hands a model a dict of features per observation; the learner takes
:class:`~stream_lstm.messages.events.Event` objects. :class:`RowReader` turns one into the other
with the rules of the JSON decoder, so that a row accepted here can be learned, predicted and
checkpointed like a message the service accepts:

* numbers (``int``, ``float``, NumPy numbers) are features: finite and at most
  :data:`~stream_lstm.messages.events.MAX_ABS_VALUE` in size;
* booleans are the features 0 and 1;
* strings are categories (``Event.categories``);
* ``None`` is a missing value, as if the field were absent (in a DataFrame, so is a missing
  cell: ``NaN``, ``None``, ``pd.NA``, ``NaT``, which is how pandas writes one);
* the fields named by ``key_field`` and ``ts_field`` are the entity key and the event time,
  not features.

Anything else is an :class:`~stream_lstm.errors.EventError` (a ``ValueError``) that names the
field: an infinite or NaN number in a dict, a magnitude over 1e18, a list, bytes, a name that is
not a string of 1 to 256 UTF-8 bytes, text that is not valid Unicode (a lone surrogate).

>>> reader = RowReader(key_field="device", ts_field="time")
>>> reader.event({"device": "d-1", "time": 60.0, "temp": 21.5, "on": True, "room": "hall"}, True)
Event(key='d-1', ts=60.0, features={'on': 1.0, 'temp': 21.5}, label=1, categories={'room': 'hall'})
>>> reader.event({"temp": float("inf")})
Traceback (most recent call last):
...
stream_lstm.errors.EventError: feature 'temp' must be finite, got inf
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_lstm.errors import ConfigError, EventError, short_repr
from stream_lstm.messages.decoding import utf8_size
from stream_lstm.messages.events import DEFAULT_KEY, DEFAULT_LIMITS, MAX_ABS_VALUE, Event, parse_timestamp

if TYPE_CHECKING:
    import pandas as pd

#: Largest size of a feature or category name, and of a key, in UTF-8 bytes (the decoder's).
MAX_NAME_BYTES = DEFAULT_LIMITS.max_name_bytes
MAX_KEY_BYTES = DEFAULT_LIMITS.max_key_bytes


def _checked_name(name: Any) -> str:
    if not isinstance(name, str):
        raise EventError(
            f"feature names must be strings, got {short_repr(name)} ({type(name).__name__}): "
            "rename the field",
            "bad_feature_name",
        )
    size = utf8_size(name, f"feature name {short_repr(name)}", "bad_feature_name")
    if not 1 <= size <= MAX_NAME_BYTES:
        raise EventError(
            f"feature name {short_repr(name)} has {size:,} bytes (must be 1 to {MAX_NAME_BYTES:,})",
            "bad_feature_name",
        )
    return name


def _number(value: Any, what: str) -> float:
    """A finite float of magnitude at most :data:`MAX_ABS_VALUE` from a real number (not a bool)."""
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise EventError(
            f"{what} is out of range (|x| > {MAX_ABS_VALUE:g}): {short_repr(value)}", "out_of_range"
        ) from None
    if not math.isfinite(number):
        raise EventError(f"{what} must be finite, got {short_repr(value)}", "non_finite")
    if abs(number) > MAX_ABS_VALUE:
        raise EventError(
            f"{what} is out of range (|x| > {MAX_ABS_VALUE:g}): {short_repr(value)}", "out_of_range"
        )
    return number


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _key(value: Any, field: str) -> str:
    """The entity key of a key field's value: a string, or an integer by its decimal text."""
    if value is None:
        return DEFAULT_KEY
    if isinstance(value, numbers.Integral) and not _is_bool(value):
        return str(int(value))
    if not isinstance(value, str):
        raise EventError(
            f"key field {short_repr(field)} must be a string or an integer, got {short_repr(value)}",
            "bad_key",
        )
    size = utf8_size(value, f"key field {short_repr(field)}", "bad_key")
    if size > MAX_KEY_BYTES:
        raise EventError(f"key of {size:,} bytes exceeds the limit of {MAX_KEY_BYTES:,}", "key_too_long")
    return value


def _timestamp(value: Any, field: str) -> float | None:
    """Seconds of a time field's value: a number, a numeric or ISO-8601 string, a ``datetime``
    (without a zone: UTC) or a NumPy ``datetime64``."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return _number(moment.timestamp(), f"time field {short_repr(field)}")
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            return None
        seconds = (value - np.datetime64(0, "s")) / np.timedelta64(1, "s")
        return _number(seconds, f"time field {short_repr(field)}")
    if _is_bool(value) or not (value is None or isinstance(value, (str, numbers.Real))):
        raise EventError(
            f"time field {short_repr(field)} must be a number, a time or a string, got {short_repr(value)}",
            "bad_ts",
        )
    if isinstance(value, str):
        utf8_size(value, f"time field {short_repr(field)}", "bad_ts")
        return parse_timestamp(value)
    return None if value is None else _number(value, f"time field {short_repr(field)}")


def label_of(y: Any) -> int | None:
    """The 0/1 label of a river target: ``True``/``False``, 1/0 (also as floats or NumPy
    numbers), or ``None`` for an observation without a label.

    >>> label_of(True), label_of(0), label_of(None)
    (1, 0, None)
    """
    if y is None:
        return None
    if _is_bool(y):
        return int(y)
    if isinstance(y, numbers.Real) and y in (0, 1):
        return int(y)
    raise EventError(
        f"label must be True/False or 1/0 (None: no label), got {short_repr(y)}: this is a binary classifier",
        "bad_label",
    )


def _is_missing_cell(value: Any) -> bool:
    """Whether a DataFrame cell holds pandas' mark of a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    import pandas as pd

    return value is pd.NA or value is pd.NaT


@dataclass(frozen=True, slots=True)
class RowReader:
    """Reads river rows into events (see the module's docstring for the rules).

    Parameters
    ----------
    key_field
        The field of ``x`` that holds the entity key (a string or an integer); ``None``: every
        row belongs to one stream. A row without the field, or with ``None`` in it, belongs to
        that one stream too.
    ts_field
        The field of ``x`` that holds the event time; ``None``: rows have no time.
    """

    key_field: str | None = None
    ts_field: str | None = None

    def __post_init__(self) -> None:
        for name in ("key_field", "ts_field"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise ConfigError(
                    f"{name} must be a field name (a non-empty string) or None, got {short_repr(value)}"
                )
        if self.key_field is not None and self.key_field == self.ts_field:
            raise ConfigError(
                f"key_field and ts_field must name different fields, both are {self.key_field!r}"
            )

    def event(self, x: Mapping[Any, Any], y: Any = None, *, skip_missing_cells: bool = False) -> Event:
        """The event of the features ``x`` with the label ``y`` (see :func:`label_of`).

        ``skip_missing_cells``: ``NaN`` and pandas' other missing marks are absent values (a
        DataFrame's rows), not refused numbers.
        """
        if not isinstance(x, Mapping):
            raise EventError(f"x must be a dict of features, got {type(x).__name__}", "not_object")
        key, ts = DEFAULT_KEY, None
        features: dict[str, float] = {}
        categories: dict[str, str] = {}
        # Sorted, so that the columns new names get do not depend on the order of a dict's keys.
        for name in sorted(x, key=_sort_key):
            value = x[name]
            if value is None or (skip_missing_cells and _is_missing_cell(value)):
                continue
            if name == self.key_field:
                key = _key(value, name)
            elif name == self.ts_field:
                ts = _timestamp(value, name)
            elif _is_bool(value):
                features[_checked_name(name)] = float(value)
            elif isinstance(value, numbers.Real):
                features[_checked_name(name)] = _number(value, f"feature {short_repr(name)}")
            elif isinstance(value, str):
                utf8_size(value, f"the value of category {short_repr(name)}", "bad_number")
                categories[_checked_name(name)] = value
            else:
                raise EventError(
                    f"feature {short_repr(name)} must be a number, a bool, a string or None, got "
                    f"{type(value).__name__} {short_repr(value)}",
                    "bad_number",
                )
        return Event(key=key, ts=ts, features=features, label=label_of(y), categories=categories)

    def events(self, X: pd.DataFrame, y: pd.Series | None = None) -> list[Event]:
        """The events of a DataFrame's rows, in order, with the labels of ``y`` (by position;
        a missing label, ``NaN`` or ``None``, is no label)."""
        records = X.to_dict("records")
        if y is None:
            return [self.event(record, skip_missing_cells=True) for record in records]
        labels = y.tolist()
        if len(labels) != len(records):
            raise EventError(f"X has {len(records):,} rows but y has {len(labels):,} labels", "bad_label")
        return [
            self.event(record, None if _is_missing_cell(label) else label, skip_missing_cells=True)
            for record, label in zip(records, labels, strict=True)
        ]


def _sort_key(name: Any) -> tuple[str, str]:
    """Orders names of any type (a non-string name is refused later, with its field's message)."""
    return (type(name).__name__, name) if isinstance(name, str) else (type(name).__name__, repr(name))
