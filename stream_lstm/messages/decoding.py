"""Message values to events: the JSON decoder, the checks every accepted value passes, and the
reasons a message is refused (each a dead letter's ``reason``).

Why a module of its own: what an event *is* (:mod:`stream_lstm.messages.events`) is shared by
every part of stream-lstm, while reading one from a producer's bytes or a parsed object, under
the size limits and the field mapping, is the service's and the CSV reader's job alone.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from stream_lstm.errors import EventError, short_repr
from stream_lstm.messages.events import (
    DEFAULT_KEY,
    DEFAULT_LIMITS,
    MAX_ABS_VALUE,
    Event,
    InputLimits,
    parse_timestamp,
)
from stream_lstm.messages.mapping import DEFAULT_MAPPING, MessageMapping

#: Why a message can be refused, each a bounded metric label and the ``reason`` of its dead letter.
DECODE_ERROR_CODES = (
    "too_large",  # the value is over max_message_bytes
    "not_json",  # no value, not UTF-8/16/32 JSON
    "too_deep",  # nested deeper than the JSON parser goes
    "duplicate_field",  # an object names a field twice: which one is meant is ambiguous
    "not_object",  # the value is JSON but not an object
    "missing_features",  # no features object (where the mapping expects one)
    "too_many_features",  # more than max_features features
    "bad_feature_name",  # a feature name that is not valid Unicode, is empty or too long
    "bad_number",  # a feature value that is not a number
    "bad_feature",  # a feature value that is an object or a list
    "bad_category",  # a text value that is not valid Unicode or is too long
    "non_finite",  # NaN, Infinity, or a number too large for a float
    "out_of_range",  # a feature value over max_abs_value in size
    "bad_label",  # a label other than 0, 1, true, false or null (or, with positive_label, not a scalar)
    "bad_ts",  # a ts that is not a number or an ISO-8601 time, or is out of range
    "bad_key",  # a key that is not a string, or not valid Unicode (a message key not UTF-8)
    "key_too_long",  # a key over max_key_bytes
    "invalid",  # the decoder itself failed (a bug): the message is kept as a dead letter
)


def _reject_constant(name: str) -> float:
    raise EventError(f"non-finite number {name} in message", "non_finite")


def _unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's fields, refusing a name given twice (JSON leaves the meaning open)."""
    fields = dict(pairs)
    if len(fields) != len(pairs):
        seen: set[str] = set()
        twice = next(name for name, _ in pairs if name in seen or seen.add(name))
        raise EventError(f"field {short_repr(twice)} appears twice in one object", "duplicate_field")
    return fields


# One decoder for every message: ``json.loads`` with options builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_fields)


def utf8_size(text: str, what: str, code: str) -> int:
    """The UTF-8 size of ``text``; :class:`EventError` if it cannot be encoded (lone surrogates)."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        raise EventError(f"{what} is not valid Unicode (a lone surrogate)", code) from None


def decode_event(
    value: bytes | None,
    message_key: bytes | None = None,
    *,
    max_bytes: int | None = None,
    limits: InputLimits = DEFAULT_LIMITS,
    mapping: MessageMapping = DEFAULT_MAPPING,
) -> Event:
    """Decode a JSON message value into an :class:`Event`; :class:`EventError` when it is refused.

    With the default ``mapping`` the value is ``{"key": str?, "ts": number | ISO-8601?,
    "features": {name: number | bool | text | null}, "label": 0 | 1 | bool | null}``; without
    ``key``, the Kafka message key (UTF-8) is the entity key. ``mapping`` names other fields and
    shapes (:class:`~stream_lstm.messages.mapping.MessageMapping`). Whatever this accepts can be
    encoded, learned, checkpointed and produced: ``limits`` bound the sizes and magnitudes, and
    every string is valid Unicode. ``max_bytes`` overrides ``limits.max_message_bytes``.

    >>> decode_event(b'{"features": {"x": 1.5, "on": true, "city": "Paris"}, "label": 1}', b"sensor-7")
    Event(key='sensor-7', ts=None, features={'x': 1.5, 'on': 1.0}, label=1, categories={'city': 'Paris'})
    >>> decode_event(b'{"features": {"x": NaN}}')
    Traceback (most recent call last):
    ...
    stream_lstm.errors.EventError: non-finite number NaN in message
    >>> decode_event(b'{"features": {}, "label": 1, "label": 0}')
    Traceback (most recent call last):
    ...
    stream_lstm.errors.EventError: field 'label' appears twice in one object
    """
    if value is None:
        raise EventError("message has no value", "not_json")
    limit = limits.max_message_bytes if max_bytes is None else max_bytes
    if len(value) > limit:
        raise EventError(f"message of {len(value):,} bytes exceeds the limit of {limit:,}", "too_large")
    try:
        # What json.loads does with bytes: UTF-8, -16 or -32, a BOM, escaped lone surrogates.
        data = _DECODER.decode(value.decode(json.detect_encoding(value), "surrogatepass"))
    except EventError:
        raise
    except RecursionError:
        raise EventError("value is nested too deeply to be read", "too_deep") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise EventError(f"value is not JSON: {short_repr(str(error), 120)}", "not_json") from None
    if not isinstance(data, dict):
        raise EventError(f"value must be a JSON object, got {type(data).__name__}", "not_object")
    return event_from_object(data, message_key, limits=limits, mapping=mapping)


def event_from_object(
    data: dict[str, Any],
    message_key: bytes | None = None,
    *,
    limits: InputLimits = DEFAULT_LIMITS,
    mapping: MessageMapping = DEFAULT_MAPPING,
) -> Event:
    """The :class:`Event` of a decoded JSON object, read through ``mapping`` (see :func:`decode_event`).

    >>> from stream_lstm.messages.mapping import MessageMapping
    >>> flat = MessageMapping(key="device.id", features_field=".", positive_label="yes")
    >>> event_from_object({"device": {"id": 7}, "load": 0.6, "city": "Paris", "label": "yes"}, mapping=flat)
    Event(key='7', ts=None, features={'load': 0.6}, label=1, categories={'city': 'Paris'})
    """
    fields = mapping.selected_fields(mapping.feature_fields(data))
    if len(fields) > limits.max_features:
        raise EventError(
            f"{len(fields):,} features exceed the limit of {limits.max_features:,}", "too_many_features"
        )
    if fields:
        _check_names(fields, limits.max_name_bytes)
    features, categories = _feature_values(fields, data is not fields, limits, mapping)
    key = _event_key(mapping.key_of(data), message_key, limits)
    label = mapping.read_label(mapping.label_of(data))
    ts = parse_timestamp(mapping.ts_of(data), max_abs=limits.max_abs_value)
    return Event(key=key, ts=ts, features=features, label=label, categories=categories)


def _feature_values(
    fields: dict[str, Any], owned: bool, limits: InputLimits, mapping: MessageMapping
) -> tuple[dict[str, float], dict[str, str]]:
    """The numeric features and the categories of ``fields``.

    The usual message holds only numbers, and when ``owned`` (``fields`` is a dict of the
    decoder's own, not the whole message) its ints are made floats in place, without a copy.
    """
    max_abs = limits.max_abs_value
    forced = mapping.categorical
    if owned and not forced:
        for name, raw in fields.items():
            kind = type(raw)
            if kind is float:
                number = raw
            elif kind is int:
                try:
                    number = fields[name] = float(raw)
                except OverflowError:  # an integer literal too large for a float
                    raise EventError(f"feature {short_repr(name)} is out of range", "non_finite") from None
            else:
                break  # text, a boolean, null, ...: read them all the general way
            if not -max_abs <= number <= max_abs:  # also false for NaN
                _raise_out_of_range(name, raw, number, max_abs)
        else:
            return fields, {}
    features: dict[str, float] = {}
    categories: dict[str, str] = {}
    for name, raw in fields.items():
        kind = type(raw)
        if name in forced:
            text = mapping.category_text(name, raw)
            if text is not None:
                categories[name] = _checked_category(name, text, limits)
        elif kind is float or kind is int:
            try:
                number = float(raw)
            except OverflowError:
                raise EventError(f"feature {short_repr(name)} is out of range", "non_finite") from None
            if not -max_abs <= number <= max_abs:
                _raise_out_of_range(name, raw, number, max_abs)
            features[name] = number
        elif kind is bool:
            features[name] = 1.0 if raw else 0.0
        elif kind is str:
            value = text_value(name, raw, max_abs)
            if type(value) is float:
                features[name] = value
            elif value is not None:
                categories[name] = _checked_category(name, value, limits)
        elif raw is not None:
            what = "an object" if kind is dict else "a list" if kind is list else kind.__name__
            raise EventError(
                f"feature {short_repr(name)} is {what}, not a number, text or true/false (leave it out with "
                f"ignore={short_repr(name)})",
                "bad_feature",
            )
    return features, categories


_BOOLEAN_TEXT = {"true": 1.0, "false": 0.0}


def text_value(name: str, text: str, max_abs: float = MAX_ABS_VALUE) -> float | str | None:
    """What a text value of a feature is: a number when it reads as one (``"0.6"``), 1/0 for
    ``true``/``false`` in any case, ``None`` when empty, else itself, a category. Text that reads
    as a number out of range or not finite (``"NaN"``) is refused (:class:`EventError`), as the
    number would be.

    >>> text_value("x", "0.6"), text_value("x", "TRUE"), text_value("x", ""), text_value("city", "Paris")
    (0.6, 1.0, None, 'Paris')
    """
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        boolean = _BOOLEAN_TEXT.get(text.strip().lower())
        return text if boolean is None else boolean
    if not -max_abs <= number <= max_abs:
        _raise_out_of_range(name, text, number, max_abs)
    return number


def _raise_out_of_range(name: str, raw: Any, number: float, max_abs: float) -> NoReturn:
    if math.isfinite(number):
        raise EventError(
            f"feature {short_repr(name)} is out of range (|x| > {max_abs:g}): {short_repr(raw)}",
            "out_of_range",
        )
    raise EventError(f"feature {short_repr(name)} must be finite, got {short_repr(raw)}", "non_finite")


def _checked_category(name: str, text: str, limits: InputLimits) -> str:
    """``text`` if it is valid Unicode of at most ``max_name_bytes``; :class:`EventError` otherwise."""
    size = utf8_size(text, f"category {short_repr(name)}", "bad_category")
    if size > limits.max_name_bytes:
        raise EventError(
            f"category {short_repr(name)} has a value of {size:,} bytes (at most {limits.max_name_bytes:,})",
            "bad_category",
        )
    return text


def _event_key(raw: Any, message_key: bytes | None, limits: InputLimits) -> str:
    """The entity key: the key field (text or an integer), else the message key, else one stream."""
    if raw is None:
        if message_key is None:
            return DEFAULT_KEY
        if len(message_key) > limits.max_key_bytes:
            raise EventError(_key_too_long(len(message_key), limits), "key_too_long")
        try:
            return message_key.decode()
        except UnicodeDecodeError:
            raise EventError("message key is not UTF-8", "bad_key") from None
    kind = type(raw)
    if kind is int:
        raw = str(raw)
    elif kind is not str:
        raise EventError(f"key must be text or an integer, got {short_repr(raw)}", "bad_key")
    if (size := utf8_size(raw, "key", "bad_key")) > limits.max_key_bytes:
        raise EventError(_key_too_long(size, limits), "key_too_long")
    return raw


def _check_names(features: dict[str, Any], max_bytes: int) -> None:
    """Every feature name is valid Unicode of 1 to ``max_bytes`` UTF-8 bytes; else :class:`EventError`."""
    if "".join(features).isascii():
        longest = max(map(len, features))
    else:
        longest = max(utf8_size(name, "a feature name", "bad_feature_name") for name in features)
    if longest > max_bytes or "" in features:
        size = 0 if "" in features else longest
        raise EventError(
            f"a feature name has {size:,} bytes (must be 1 to {max_bytes:,})", "bad_feature_name"
        )


def _key_too_long(size: int, limits: InputLimits) -> str:
    return f"key of {size:,} bytes exceeds the limit of {limits.max_key_bytes:,}"
