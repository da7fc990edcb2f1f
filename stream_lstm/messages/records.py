"""The service's output records: a prediction per event, a dead letter per input it could not use.

Both are bounded by construction. A prediction holds the event's key, which the decoder bounds
(``InputLimits.max_key_bytes``; JSON escaping makes each byte at most six), its timestamp and
label, its source coordinates and one probability per model. A dead letter's copy of the message
value and its error text are cut to fixed sizes (with the original size and a ``truncated``
flag), and its Kafka key is the input's key only while that is within the key limit. With the
defaults a dead letter is under 90 KiB: text whose JSON escaping would make it larger than base64
is copied as base64.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from stream_lstm.messages.decoding import DECODE_ERROR_CODES
from stream_lstm.messages.events import Event

#: One encoder for every prediction record: ``json.dumps`` with options builds a new one per call.
_PREDICTION_ENCODER = json.JSONEncoder(allow_nan=False)

#: At most this much of a message's value is copied into its dead letter.
DEAD_LETTER_VALUE_BYTES = 64 * 1024

#: At most this many characters of the error text go into a dead letter.
DEAD_LETTER_ERROR_CHARS = 500

#: Reasons that come from the output side: the input was valid, its prediction record was refused
#: for good by the producer or the broker (too large for the output topic, say).
OUTPUT_REASONS = ("output_rejected",)

#: Every ``reason`` a dead letter can carry (a bounded metric label).
DEAD_LETTER_REASONS = (*DECODE_ERROR_CODES, *OUTPUT_REASONS)


def prediction_value(
    event: Event, source: tuple[str, int, int], predictions: dict[str, float], model_step: int
) -> bytes:
    """The JSON value of a prediction record (its Kafka key is the event's key in UTF-8).

    >>> prediction_value(Event(key="a", label=1), ("events", 0, 7), {"lstm": 0.75}, 3)
    b'{"key": "a", "ts": null, "label": 1, "source": {"topic": "events", "partition": 0, \
"offset": 7}, "predictions": {"lstm": 0.75}, "model_step": 3}'
    """
    return _PREDICTION_ENCODER.encode(
        {
            "key": event.key,
            "ts": event.ts,
            "label": event.label,
            "source": {"topic": source[0], "partition": source[1], "offset": source[2]},
            "predictions": predictions,
            "model_step": model_step,
        }
    ).encode()


def _text_prefix(data: bytes) -> str | None:
    """``data`` as UTF-8 text, allowing a character cut in two at its end; ``None`` if not text."""
    for cut in range(4):  # a UTF-8 character has at most 4 bytes
        try:
            return data[: len(data) - cut].decode()
        except UnicodeDecodeError:
            continue
    return None


def dead_letter_value(
    *,
    value: bytes | None,
    reason: str,
    error: str,
    source: tuple[str, int, int],
    key_bytes: int,
) -> bytes:
    """The JSON value of a dead letter: reason, error text, source coordinates and the value.

    >>> record = json.loads(dead_letter_value(
    ...     value=b"x" * 100_000, reason="not_json", error="bad", source=("events", 0, 7), key_bytes=0))
    >>> record["reason"], record["value_bytes"], len(record["value"]), record["truncated"]
    ('not_json', 100000, 65536, True)
    """
    raw = value if value is not None else b""
    kept = raw[:DEAD_LETTER_VALUE_BYTES]
    text = _text_prefix(kept) if value is not None else None
    record: dict[str, Any] = {
        "error": error[:DEAD_LETTER_ERROR_CHARS],
        "error_truncated": len(error) > DEAD_LETTER_ERROR_CHARS,
        "reason": reason,
        "source": {"topic": source[0], "partition": source[1], "offset": source[2]},
    }
    # Text is kept as text unless JSON escaping would make it larger than base64 (a control
    # character escapes to six bytes): a dead letter's copy never grows past 4/3 of its bytes.
    if value is None or (
        text is not None
        and len(json.dumps(text, ensure_ascii=False).encode()) <= (len(kept) + 2) * 4 // 3 + 2
    ):
        record.update(value=text, value_encoding="utf-8")
        copied = len(text.encode()) if text is not None else 0
    else:
        record.update(value=base64.b64encode(kept).decode(), value_encoding="base64")
        copied = len(kept)
    record.update(value_bytes=len(raw), truncated=copied < len(raw), key_bytes=key_bytes)
    # UTF-8 JSON (non-ASCII text as it came); an error text can only hold escaped surrogates.
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "backslashreplace")


def dead_letter_key(key: bytes | None, max_key_bytes: int) -> bytes | None:
    """The Kafka key of a dead letter: the input's, unless it is over the key limit (then none;
    the record's ``key_bytes`` still says how long it was)."""
    if key is None or len(key) > max_key_bytes:
        return None
    return key


class RateLimitedLog:
    """Logs one line per kind (a dead-letter reason, say) per interval, with the count held back.

    A producer sending thousands of bad messages a second must not turn the log into a copy of
    them: each kind gets one line, then at most one per ``interval_s``.

    Examples
    --------
    >>> now = [0.0]
    >>> lines = []
    >>> limited = RateLimitedLog(lambda text: lines.append(text), interval_s=60, clock=lambda: now[0])
    >>> for offset in range(3):
    ...     limited.note("not_json", f"events:0@{offset}: bad")
    >>> now[0] = 61.0
    >>> limited.note("not_json", "events:0@3: bad")
    >>> lines
    ['events:0@0: bad', 'events:0@3: bad (2 more not_json in the last 61 s not shown)']
    """

    #: Kinds remembered at most (kinds are bounded labels; this only guards against misuse).
    MAX_KINDS = 256

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.write = write
        self.interval_s = interval_s
        self.clock = clock
        self._kinds: dict[str, list[float]] = {}  # kind -> [when one last passed, held back since]

    def note(self, kind: str, text: str) -> None:
        """Log ``text`` unless a line of ``kind`` passed less than ``interval_s`` ago."""
        now = self.clock()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.interval_s:
            seen[1] += 1
            return
        if len(self._kinds) >= self.MAX_KINDS:
            self._kinds.clear()
        self._kinds[kind] = [now, 0]
        if seen is not None and seen[1]:
            text = f"{text} ({seen[1]:.0f} more {kind} in the last {now - seen[0]:.0f} s not shown)"
        self.write(text)


def dead_letter_logger(logger: logging.Logger, *, interval_s: float = 60.0) -> RateLimitedLog:
    """A :class:`RateLimitedLog` writing warnings to ``logger``."""
    return RateLimitedLog(lambda text: logger.warning("%s", text), interval_s=interval_s)
