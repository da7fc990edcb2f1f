"""The event type shared by every part of stream-lstm, and its validation.

An event belongs to one entity (``key``); events of one key are ordered. Features are a free
mapping from names to finite numbers, so they may appear, disappear or arrive in any order between
events. ``label`` is 0, 1, or ``None`` for an event that is predicted but not learned from.
"""

from __future__ import annotations

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


def parse_label(value: Any) -> int | None:
    """Read a label: 0, 1 (also as ``"0"``, ``"1.0"``, booleans), or ``None``/``""`` for none.

    >>> parse_label("1"), parse_label(0.0), parse_label(None), parse_label("")
    (1, 0, None, None)
    """
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
    raise EventError(f"label must be 0, 1 or empty, got {value!r}")


def parse_number(value: Any, what: str) -> float:
    """Read a finite float from a number or numeric string; raise :class:`EventError` otherwise."""
    if isinstance(value, bool):
        raise EventError(f"{what} must be a number, got a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EventError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise EventError(f"{what} must be finite, got {value!r}")
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
            return parse_number(value, "ts")
        except EventError:
            pass
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise EventError(f"ts must be a number or an ISO-8601 time, got {value!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # a time without a zone is read as UTC
        return moment.timestamp()
    return parse_number(value, "ts")
