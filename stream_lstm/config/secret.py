"""Secret values (passwords, keys, tokens) that never show themselves by accident.

A setting declared with ``secret=True`` resolves to a :class:`Secret`: its ``str``, ``repr`` and
format are ``'***'``, so a secret that ends up in a log line, an error message, a health answer
or the repr of a settings object shows nothing. Only :meth:`Secret.reveal` gives the value, and
only the code that hands it to a client library calls it.

Every secret made is also remembered, so that :func:`redact` can mask it wherever it turns up
in text that leaves the process: a client library's own log lines (kafka-python logs its SASL
request at DEBUG; librdkafka echoes misplaced values in its warnings), error messages and
``/healthz`` (:mod:`stream_lstm.telemetry.redaction` applies it to every log record).

Such a setting can also be read from a file (``--NAME-file``, ``STREAM_LSTM_NAME_FILE`` or
``name_file`` in TOML), so that the secret need not be on a command line or in the environment
(Docker and Kubernetes mount secrets as files). One trailing newline of the file is dropped.
"""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

from stream_lstm.errors import ConfigError

#: What a secret looks like wherever it is shown.
MASK = "***"

#: Secrets shorter than this are not searched for in text (masking every "a" would hide the
#: log, not the secret); no password of a real cluster is that short.
MIN_REDACTED_LENGTH = 4

_known: dict[str, None] = {}  # every form of every secret created in this process, longest first
_known_lock = threading.Lock()


def _forms(value: str) -> set[str]:
    """The ways ``value`` can appear in text: as it is, escaped in a str's or bytes' repr, in
    JSON, and in base64 (kafka-python's DEBUG log shows its SASL request's bytes)."""
    encoded = value.encode("utf-8")
    forms = {
        value,
        repr(value)[1:-1],
        repr(encoded)[2:-1],
        json.dumps(value)[1:-1],
        base64.b64encode(encoded).decode("ascii"),
    }
    return {form for form in forms if len(form) >= MIN_REDACTED_LENGTH}


def _remember(value: str) -> None:
    forms = _forms(value)
    if not forms:
        return
    global _known
    with _known_lock:
        merged = {*_known, *forms}
        _known = dict.fromkeys(sorted(merged, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every secret this process knows replaced by :data:`MASK`."""
    for form in _known:  # a snapshot: the dict is replaced, never changed
        if form in text:
            text = text.replace(form, MASK)
    return text


class Secret:
    """A value that shows as ``***``; :meth:`reveal` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = str(value)
        _remember(self._value)

    def reveal(self) -> str:
        """The secret itself: for a client library's configuration, never for a message."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple:
        # Kept out of pickles too (a pickle is a message of sorts): refuse rather than leak.
        raise TypeError("a Secret is not pickled; pass what it protects explicitly")


def secret(text: str) -> Secret:
    """Parse a secret setting's value: any text, kept as a :class:`Secret`."""
    if isinstance(text, Secret):
        return text
    return Secret(text)


def read_secret_file(path: str | Path, name: str) -> Secret:
    """The secret in ``path``, less one trailing newline; a :class:`ConfigError` if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise ConfigError(f"{name}: cannot read the secret file {path}: {reason}") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ConfigError(f"{name}: the secret file {path} is empty")
    return Secret(text)
