"""Secret values (passwords, keys, tokens) that never show themselves by accident.

A setting declared with ``secret=True`` resolves to a :class:`Secret`: its ``str``, ``repr`` and
format are ``'***'``, so a secret that ends up in a log line, an error message, a health answer
or the repr of a settings object shows nothing. Only :meth:`Secret.reveal` gives the value, and
only the code that hands it to a client library calls it.

Such a setting can also be read from a file (``--NAME-file``, ``STREAM_LSTM_NAME_FILE`` or
``name_file`` in TOML), so that the secret need not be on a command line or in the environment
(Docker and Kubernetes mount secrets as files). One trailing newline of the file is dropped.
"""

from __future__ import annotations

from pathlib import Path

from stream_lstm.errors import ConfigError

#: What a secret looks like wherever it is shown.
MASK = "***"


class Secret:
    """A value that shows as ``***``; :meth:`reveal` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = str(value)

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
