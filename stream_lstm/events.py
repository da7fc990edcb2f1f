"""The event type shared by every part of stream-lstm, and its validation.

An event belongs to one entity (``key``); events of one key are ordered. Features are a free
mapping from names to finite numbers, so they may appear, disappear or arrive in any order between
events. ``label`` is 0, 1, or ``None`` for an event that is predicted but not learned from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stream_lstm.errors import EventError

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

    Examples
    --------
    >>> Event(key="sensor-1", ts=10.0, features={"x": 0.5}, label=1).label
    1
    """

    key: str = DEFAULT_KEY
    ts: float | None = None
    features: Mapping[str, float] = field(default_factory=dict)
    label: int | None = None


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


def parse_number(value: Any, what: str) -> float:
    """Read a finite float from a number or numeric string; raise :class:`EventError` otherwise."""
    if isinstance(value, bool):
        raise EventError(f"{what} must be a number, got a boolean", "bad_number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise EventError(f"{what} must be a number, got {str(value)[:40]!r}", "bad_number") from None
    if not math.isfinite(number):
        raise EventError(f"{what} must be finite, got {value!r}", "non_finite")
    return number


def parse_timestamp(value: Any) -> float | None:
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
            if not math.isfinite(number):
                raise EventError(f"ts must be finite, got {value!r}", "bad_ts")
            return number
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise EventError(f"ts must be a number or an ISO-8601 time, got {value!r}", "bad_ts") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # a time without a zone is read as UTC
        return moment.timestamp()
    try:
        number = parse_number(value, "ts")
    except EventError as error:
        raise EventError(str(error), "bad_ts") from None
    return number


#: Default size limit of an encoded message value, in bytes.
MAX_MESSAGE_BYTES = 1_000_000

#: The codes of :class:`EventError` that decoding a message can raise (a bounded metric label).
DECODE_ERROR_CODES = (
    "too_large",
    "not_json",
    "not_object",
    "missing_features",
    "bad_number",
    "non_finite",
    "bad_label",
    "bad_ts",
    "bad_key",
    "invalid",
)


def _reject_constant(name: str) -> float:
    raise EventError(f"non-finite number {name} in message", "non_finite")


# One decoder for every message: ``json.loads`` with options builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def decode_event(
    value: bytes | None, message_key: bytes | None = None, *, max_bytes: int = MAX_MESSAGE_BYTES
) -> Event:
    """Decode a JSON message value into an :class:`Event`; :class:`EventError` when malformed.

    The value is ``{"key": str?, "ts": number | ISO-8601?, "features": {name: number},
    "label": 0 | 1 | null}``; without ``key``, the Kafka message key (UTF-8) is the entity key.

    >>> decode_event(b'{"features": {"x": 1.5}, "label": 1}', b"sensor-7")
    Event(key='sensor-7', ts=None, features={'x': 1.5}, label=1)
    >>> decode_event(b'{"features": {"x": NaN}}')
    Traceback (most recent call last):
    ...
    stream_lstm.errors.EventError: non-finite number NaN in message
    """
    if value is None:
        raise EventError("message has no value", "not_json")
    if len(value) > max_bytes:
        raise EventError(f"message of {len(value):,} bytes exceeds the limit of {max_bytes:,}", "too_large")
    try:
        # What json.loads does with bytes: UTF-8, -16 or -32, a BOM, escaped lone surrogates.
        data = _DECODER.decode(value.decode(json.detect_encoding(value), "surrogatepass"))
    except EventError:
        raise
    except (ValueError, UnicodeDecodeError) as error:
        raise EventError(f"value is not JSON: {error}", "not_json") from None
    if not isinstance(data, dict):
        raise EventError(f"value must be a JSON object, got {type(data).__name__}", "not_object")
    raw_features = data.get("features")
    if not isinstance(raw_features, dict):
        raise EventError('value has no "features" object', "missing_features")
    features = {}
    for name, raw in raw_features.items():
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise EventError(f"feature {name!r} must be a number, got {raw!r}", "bad_number")
        try:
            number = float(raw)
        except OverflowError:  # an integer literal too large for a float
            raise EventError(f"feature {name!r} is out of range", "non_finite") from None
        if not math.isfinite(number):
            raise EventError(f"feature {name!r} must be finite, got {raw!r}", "non_finite")
        features[name] = number
    key = data.get("key")
    if key is None:
        try:
            key = message_key.decode() if message_key is not None else DEFAULT_KEY
        except UnicodeDecodeError:
            raise EventError("message key is not UTF-8", "bad_key") from None
    elif not isinstance(key, str):
        raise EventError(f"key must be a string, got {key!r}", "bad_key")
    label = data.get("label")
    if label is not None and (isinstance(label, bool) or label not in (0, 1)):
        raise EventError(f"label must be 0, 1 or null, got {label!r}", "bad_label")
    return Event(key=key, ts=parse_timestamp(data.get("ts")), features=features, label=label and int(label))


def encode_event(event: Event) -> bytes:
    """The JSON message value of an event (what :func:`decode_event` reads).

    >>> decode_event(encode_event(Event(key="a", ts=1.0, features={"x": 2.0}, label=0)))
    Event(key='a', ts=1.0, features={'x': 2.0}, label=0)
    """
    return json.dumps(
        {"key": event.key, "ts": event.ts, "features": dict(event.features), "label": event.label},
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
