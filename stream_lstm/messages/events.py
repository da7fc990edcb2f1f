"""The event type shared by every part of stream-lstm, and its validation.

An event belongs to one entity (``key``); events of one key are ordered. Features are a free
mapping from names to finite numbers, so they may appear, disappear or arrive in any order between
events. ``label`` is 0, 1, or ``None`` for an event that is predicted but not learned from.
``categories`` are the event's categorical features (text values by name), which the models turn
into a bounded number of inputs (:mod:`stream_lstm.messages.categories`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stream_lstm.errors import ConfigError, EventError, short_repr

#: The key of events that carry none: they form one stream.
DEFAULT_KEY = ""


@dataclass(frozen=True, slots=True)
class Event:
    """One observation of one entity.

    Parameters
    ----------
    key
        The entity the event belongs to; events without a key form one stream.
    ts
        Event time in seconds (any origin), or ``None`` when the stream has no timestamps.
    features
        Finite numeric features by name.
    label
        0, 1, or ``None`` when the outcome is unknown.
    categories
        Categorical features by name: text values such as ``{"city": "Paris"}``. A name is either a
        feature or a category in one event, never both.

    Examples
    --------
    >>> Event(key="sensor-1", ts=10.0, features={"x": 0.5}, label=1).label
    1
    """

    key: str = DEFAULT_KEY
    ts: float | None = None
    features: Mapping[str, float] = field(default_factory=dict)
    label: int | None = None
    categories: Mapping[str, str] = field(default_factory=dict)


_PLAIN_LABELS = {"0": 0, "1": 1}


def parse_label(value: Any) -> int | None:
    """Read a label: 0, 1 (also as ``"0"``, ``"1.0"``, booleans), or ``None``/``""`` for none.

    >>> parse_label("1"), parse_label(0.0), parse_label(None), parse_label("")
    (1, 0, None, None)
    """
    if type(value) is str:  # the common case first: a CSV cell or a JSON string "0" or "1"
        plain = _PLAIN_LABELS.get(value)
        if plain is not None:
            return plain
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("0", "1", "0.0", "1.0"):
            return int(float(text))
        if text in ("true", "false"):
            return int(text == "true")
        if text == "":
            return None
    raise EventError(f"label must be 0, 1 or empty, got {value!r}", "bad_label")


#: Largest magnitude of a number (feature value or ``ts``) that an event may hold. Its square
#: times any realistic event count stays far inside float64, so the online scalers cannot
#: overflow; millisecond and microsecond epoch timestamps fit.
MAX_ABS_VALUE = 1e18


def parse_number(value: Any, what: str, *, max_abs: float = MAX_ABS_VALUE) -> float:
    """Read a finite float of magnitude at most ``max_abs`` from a number or numeric string;
    raise :class:`EventError` otherwise.

    >>> parse_number("2.5", "x")
    2.5
    >>> parse_number("1e300", "x")
    Traceback (most recent call last):
    ...
    stream_lstm.errors.EventError: x is out of range (|x| > 1e+18): '1e300'
    """
    if isinstance(value, bool):
        raise EventError(f"{what} must be a number, got a boolean", "bad_number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise EventError(f"{what} must be a number, got {short_repr(value)}", "bad_number") from None
    if not math.isfinite(number):
        raise EventError(f"{what} must be finite, got {short_repr(value)}", "non_finite")
    if abs(number) > max_abs:
        raise EventError(f"{what} is out of range (|x| > {max_abs:g}): {short_repr(value)}", "out_of_range")
    return number


def parse_timestamp(value: Any, *, max_abs: float = MAX_ABS_VALUE) -> float | None:
    """Read a timestamp in seconds: a number, a numeric string or an ISO-8601 string (UTC if unzoned).

    >>> parse_timestamp("1970-01-01T00:01:00+00:00"), parse_timestamp("60"), parse_timestamp(None)
    (60.0, 60.0, None)
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass  # not a number: an ISO-8601 time, or nothing readable
        else:
            if not math.isfinite(number) or abs(number) > max_abs:
                raise EventError(
                    f"ts must be finite and at most {max_abs:g} in size, got {short_repr(value)}", "bad_ts"
                )
            return number
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise EventError(
                f"ts must be a number or an ISO-8601 time, got {short_repr(value)}", "bad_ts"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # a time without a zone is read as UTC
        return moment.timestamp()
    try:
        number = parse_number(value, "ts", max_abs=max_abs)
    except EventError as error:
        raise EventError(str(error), "bad_ts") from None
    return number


@dataclass(frozen=True, slots=True)
class InputLimits:
    """What one message may hold; anything past a limit is a dead letter with its own reason.

    The limits make every accepted event safe for every later step: its key fits in an output
    record whatever the escaping, its names and numbers can be stored, scaled and learned.

    Parameters
    ----------
    max_message_bytes
        Size of the message value.
    max_key_bytes
        Size of the entity key in UTF-8 (the ``key`` field, else the Kafka message key).
    max_name_bytes
        Size of each feature name in UTF-8.
    max_features
        Number of features in one message.
    max_abs_value
        Magnitude of every feature value and of ``ts``.
    """

    max_message_bytes: int = 1_000_000
    max_key_bytes: int = 1024
    max_name_bytes: int = 256
    max_features: int = 256
    max_abs_value: float = MAX_ABS_VALUE

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_key_bytes", "max_name_bytes", "max_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < self.max_abs_value <= MAX_ABS_VALUE:
            raise ConfigError(f"max_abs_value must be in (0, {MAX_ABS_VALUE:g}], got {self.max_abs_value!r}")


#: The limits of a service started with the default settings.
DEFAULT_LIMITS = InputLimits()

#: Default size limit of an encoded message value, in bytes.
MAX_MESSAGE_BYTES = DEFAULT_LIMITS.max_message_bytes


def encode_event(event: Event) -> bytes:
    """The JSON message value of an event (what :func:`~stream_lstm.messages.decoding.decode_event`
    reads).

    Categories are text values beside the numeric features in ``features``.

    >>> from stream_lstm.messages.decoding import decode_event
    >>> decode_event(encode_event(Event(key="a", ts=1.0, features={"x": 2.0}, label=0)))
    Event(key='a', ts=1.0, features={'x': 2.0}, label=0, categories={})
    """
    return json.dumps(
        {
            "key": event.key,
            "ts": event.ts,
            "features": {**event.features, **event.categories},
            "label": event.label,
        },
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
