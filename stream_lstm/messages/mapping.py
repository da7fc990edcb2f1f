"""Where an event's parts are in a user's message: the fields of its key, time, label and features.

Producers send their own shapes: ``{"key", "ts", "features": {...}, "label"}`` (the default), a
flat object whose top-level fields are the features, nested objects (``device.id``), booleans,
text labels such as ``"yes"``, text values such as ``"city": "Paris"``. A :class:`MessageMapping`
names the fields (dot paths into nested objects) and says how values are read, and both ``run``
(JSON messages, :func:`~stream_lstm.messages.decoding.decode_event`) and ``evaluate``/``produce``
(CSV rows, :mod:`stream_lstm.offline.csv_source`) read through it:

* a number is a feature, ``true``/``false`` a 0/1 feature, text a category
  (:attr:`~stream_lstm.messages.events.Event.categories`), ``null`` (or an empty CSV cell) a
  missing value; a field listed in ``categorical`` is a category even when its values are numbers;
* a label is 0/1 or ``true``/``false``; with ``positive_label`` it is 1 when it equals that value
  and 0 for any other value, for labels such as ``"yes"``/``"no"`` or classes ``0..3``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream_lstm.errors import ConfigError, EventError, short_repr

#: ``features_field`` of flat messages: every top-level field but the key, time and label fields.
FLAT = "."

_LABEL_TEXT = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}


def _path(text: str | None, what: str) -> tuple[str, ...] | None:
    """The segments of a dot path (``"device.id"``), ``None`` for no field; refuses empty segments."""
    if text is None:
        return None
    parts = tuple(text.split("."))
    if not all(parts):
        raise ConfigError(f"{what} {text!r} is not a field path: name fields joined by dots, as device.id")
    return parts


def _names(values: Iterable[str] | None, what: str) -> frozenset[str] | None:
    if values is None:
        return None
    names = frozenset(values)
    if "" in names:
        raise ConfigError(f"{what} has an empty name")
    return names


@dataclass(frozen=True)
class MessageMapping:
    """How to find an event in a message or a CSV row.

    Parameters
    ----------
    key, ts, label
        Fields of the entity key, the event time and the label, as dot paths into nested JSON
        objects (``"device.id"``; a CSV column's whole name). ``None``, or a field a message
        lacks: no key (the Kafka message key, else one stream), no time, no label.
    features_field
        The JSON object that holds the features (a dot path), or :data:`FLAT` (``"."``) for
        messages whose top-level fields are the features. CSV rows are always flat.
    features
        Only these feature names are read (``None``: all of them).
    ignore
        Feature names never read.
    categorical
        Feature names whose values are categories even when they are numbers (a zip code).
    positive_label
        The label value that means 1; any other value means 0. ``None``: labels are 0/1 or
        ``true``/``false``.

    Examples
    --------
    >>> flat = MessageMapping(features_field=".", positive_label="yes")
    >>> from stream_lstm.messages.decoding import event_from_object
    >>> event_from_object({"key": "m1", "load": 0.6, "city": "Paris", "label": "yes"}, mapping=flat)
    Event(key='m1', ts=None, features={'load': 0.6}, label=1, categories={'city': 'Paris'})
    """

    key: str | None = "key"
    ts: str | None = "ts"
    label: str | None = "label"
    features_field: str = "features"
    features: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    categorical: frozenset[str] = frozenset()
    positive_label: str | None = None
    _key_path: tuple[str, ...] | None = field(init=False, repr=False, compare=False)
    _ts_path: tuple[str, ...] | None = field(init=False, repr=False, compare=False)
    _label_path: tuple[str, ...] | None = field(init=False, repr=False, compare=False)
    _features_path: tuple[str, ...] | None = field(init=False, repr=False, compare=False)
    #: Top-level names a flat message's features leave out: the first segments of the other paths.
    _not_features: frozenset[str] = field(init=False, repr=False, compare=False)
    _positive_number: float | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "_key_path", _path(self.key, "key"))
        set_(self, "_ts_path", _path(self.ts, "ts"))
        set_(self, "_label_path", _path(self.label, "label"))
        flat = self.features_field == FLAT
        set_(self, "_features_path", None if flat else _path(self.features_field, "features_field"))
        set_(self, "features", _names(self.features, "features"))
        set_(self, "ignore", _names(self.ignore, "ignore") or frozenset())
        set_(self, "categorical", _names(self.categorical, "categorical") or frozenset())
        paths = (self._key_path, self._ts_path, self._label_path)
        set_(self, "_not_features", frozenset(path[0] for path in paths if path) if flat else frozenset())
        positive = self.positive_label
        if positive is not None and not positive.strip():
            raise ConfigError("positive_label must be a value, got an empty one")
        number = None
        if positive is not None:
            try:
                number = float(positive)
            except ValueError:
                number = None
            if number is not None and not math.isfinite(number):
                number = None
        set_(self, "_positive_number", number)

    @property
    def flat(self) -> bool:
        """Whether the features are the top-level fields of a message."""
        return self._features_path is None

    @property
    def selects_all(self) -> bool:
        """Whether every field is read as usual: none chosen, ignored or made a category."""
        return self.features is None and not self.ignore and not self.categorical

    def reads(self, name: str) -> bool:
        """Whether a feature field called ``name`` is read (``features`` and ``ignore``)."""
        return (self.features is None or name in self.features) and name not in self.ignore

    # ------------------------------------------------------------------ fields of a JSON object

    @staticmethod
    def _lookup(data: Mapping[str, Any], path: tuple[str, ...] | None) -> Any:
        """The value at ``path`` in nested objects, ``None`` where a step is missing or no object."""
        if path is None:
            return None
        value: Any = data
        for part in path:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    def key_of(self, data: Mapping[str, Any]) -> Any:
        """The raw value of the key field (``None`` when the message has none)."""
        return self._lookup(data, self._key_path)

    def ts_of(self, data: Mapping[str, Any]) -> Any:
        """The raw value of the time field."""
        return self._lookup(data, self._ts_path)

    def label_of(self, data: Mapping[str, Any]) -> Any:
        """The raw value of the label field."""
        return self._lookup(data, self._label_path)

    def feature_fields(self, data: dict[str, Any]) -> dict[str, Any]:
        """The object that holds the features (the message itself when flat); :class:`EventError`
        ``missing_features`` when there is none. The caller must not change it when flat."""
        if self._features_path is None:
            return data
        found = self._lookup(data, self._features_path)
        if not isinstance(found, dict):
            raise EventError(
                f"value has no {self.features_field!r} object (for flat messages, whose top-level "
                "fields are the features, set features_field, --features-field, to '.')",
                "missing_features",
            )
        return found

    def selected_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``fields`` without the names this mapping does not read as features (the key, time and
        label fields of a flat message, ``ignore``, those outside ``features``); ``fields`` itself
        when every name is read."""
        if self.selects_all and not self._not_features:
            return fields
        skip = self._not_features
        return {name: value for name, value in fields.items() if name not in skip and self.reads(name)}

    # ------------------------------------------------------------------ values

    def read_label(self, value: Any) -> int | None:
        """The label 0/1 of a raw value, ``None`` for ``null`` or empty; :class:`EventError`
        ``bad_label`` with what to do otherwise.

        >>> plain, yes = MessageMapping(), MessageMapping(positive_label="yes")
        >>> three = MessageMapping(positive_label="3")
        >>> plain.read_label(True), plain.read_label("0"), plain.read_label(None)
        (1, 0, None)
        >>> three.read_label(3.0), yes.read_label("no")
        (1, 0)
        """
        if value is None or value == "":
            return None
        if self.positive_label is not None:
            return self._is_positive(value)
        kind = type(value)
        if kind is bool:
            return int(value)
        if (kind is int or kind is float) and value in (0, 1):
            return int(value)
        if kind is str:
            text = value.strip().lower()
            plain = _LABEL_TEXT.get(text)
            if plain is not None:
                return plain
            if not text:
                return None
        raise EventError(
            f"label must be 0, 1, true, false or empty, got {short_repr(value)} (for other labels, set "
            "positive_label, --positive-label, to the value that means 1)",
            "bad_label",
        )

    def _is_positive(self, value: Any) -> int:
        kind = type(value)
        if kind is str:
            text = value.strip()
            if text == self.positive_label:
                return 1
            if self._positive_number is not None:
                try:
                    return int(float(text) == self._positive_number)
                except ValueError:
                    return 0
            return 0
        if kind is bool:
            return int(("true" if value else "false") == self.positive_label.lower())  # type: ignore[union-attr]
        if kind is int or kind is float:
            return int(self._positive_number is not None and value == self._positive_number)
        raise EventError(f"label must be a number, text or true/false, got {short_repr(value)}", "bad_label")

    def category_text(self, name: str, value: Any) -> str | None:
        """A value of a ``categorical`` field as its category: text as it is, a number or boolean as
        its JSON text; ``None`` for a missing value."""
        kind = type(value)
        if kind is str:
            return value or None
        if kind is bool:
            return "true" if value else "false"
        if kind is int:
            return str(value)
        if kind is float:
            return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
        if value is None:
            return None
        raise EventError(
            f"category {short_repr(name)} must be text, a number or true/false, got {type(value).__name__}",
            "bad_category",
        )


#: How messages are read when nothing is configured: ``{"key", "ts", "features": {...}, "label"}``.
DEFAULT_MAPPING = MessageMapping()
