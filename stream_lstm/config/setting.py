"""Settings, read in one place: command-line flags, then ``STREAM_LSTM_*`` variables, then TOML.

Every setting is declared once as a :class:`Setting` (all of them in
:mod:`stream_lstm.config.declared`); the command line, the environment and the TOML file all go
through it, so a name, a parser and a default can never disagree between them. A flag given on the
command line wins over the environment, which wins over the file (``--config FILE.toml``, flat
``name = value`` pairs), which wins over the default.

This module holds the mechanics: :class:`Setting`, the parsers of values, the flags
(:func:`add_settings`) and the resolution (:func:`resolve_settings`).
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_lstm.config.secret import MASK, read_secret_file
from stream_lstm.errors import ConfigError
from stream_lstm.learner.limits import (
    check_base_rate_odds,
    check_extra_step_events,
    check_lr_boost_half_life,
    check_steps_per_batch,
)
from stream_lstm.messages.stream_rate import check_stream_rate_half_life
from stream_lstm.messages.trend_scales import check_trend_scales

ENV_PREFIX = "STREAM_LSTM_"


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off`` or ``1/0``, in any case."""
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_auto_bool(text: str) -> bool | str:
    """``auto`` (returned as the string ``"auto"``), or a boolean as :func:`parse_bool` reads it."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return parse_bool(text)
    except ValueError:
        raise ValueError(f"expected auto, true or false, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    value = _integer(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def steps_per_batch(text: str) -> int:
    """An integer from 1 to the learner's bound on steps per batch (the learner's own check)."""
    return check_steps_per_batch(positive_int(text))


def extra_step_events(text: str) -> int:
    """An integer from 0 to the learner's bound on extra-step events (the learner's own check)."""
    return check_extra_step_events(non_negative_int(text))


def base_rate_odds(text: str) -> float:
    """A number of nats from 0 to the learner's bound on the base-rate odds (its own check)."""
    return check_base_rate_odds(non_negative_float(text))


def lr_boost_half_life(text: str) -> float:
    """0 or a number of optimizer steps from 1 to the learner's bound (the learner's own check)."""
    return check_lr_boost_half_life(non_negative_float(text))


def stream_rate_half_life(text: str) -> float:
    """0 or a number of events from 1 to the learner's bound (the learner's own check)."""
    return check_stream_rate_half_life(non_negative_float(text))


def trend_scales(text: str) -> int:
    """An integer from 0 to the learner's bound on trend scales (the learner's own check)."""
    return check_trend_scales(non_negative_int(text))


def non_negative_int(text: str) -> int:
    """An integer of at least 0."""
    value = _integer(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


#: The log levels ``--log-level`` accepts, in any case.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

#: The highest TCP port.
MAX_PORT = 65535


def port(text: str) -> int:
    """A TCP port to connect to or listen on: 1 to 65535."""
    value = _integer(text)
    if not 1 <= value <= MAX_PORT:
        raise ValueError(f"a port is 1 to {MAX_PORT}, got {value}")
    return value


def port_or_any(text: str) -> int:
    """A TCP port to listen on: 1 to 65535, or 0 for any free port."""
    value = _integer(text)
    if not 0 <= value <= MAX_PORT:
        raise ValueError(f"a port is 1 to {MAX_PORT} (or 0: any free port), got {value}")
    return value


def log_level(text: str) -> str:
    """DEBUG, INFO, WARNING or ERROR, in any case; returned in capitals."""
    value = str(text).strip().upper()
    if value not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return value


def host_port_list(text: str) -> str:
    """``HOST:PORT[,HOST:PORT...]`` (an IPv6 address in brackets: ``[::1]:9092``), items stripped.

    Each port is 1 to 65535; a host is a name or an address, without spaces or slashes (a URL
    such as ``kafka://host:9092`` is not a bootstrap server).
    """
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise ValueError("expected HOST:PORT[,HOST:PORT], got nothing")
    for item in items:
        _check_host_port(item)
    return ",".join(items)


def _check_host_port(item: str) -> None:
    example = "(e.g. broker-1.example.com:9092, or [::1]:9092 for IPv6)"
    host, colon, port_text = item.rpartition(":")
    if not item:
        raise ValueError(f"an empty item in the list; expected HOST:PORT {example}")
    if not colon or not host:
        raise ValueError(f"{item!r} is not HOST:PORT {example}")
    if any(c.isspace() or c in "/@" for c in item) or not item.isprintable():
        raise ValueError(f"{item!r} is not HOST:PORT {example}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host or any(c not in "0123456789abcdefABCDEF:." for c in host) or ":" not in host:
            raise ValueError(f"{item!r}: {host!r} in brackets is not an IPv6 address")
    elif ":" in host:
        raise ValueError(f"{item!r}: write an IPv6 address in brackets, e.g. [::1]:9092")
    if any(c in "[]" for c in host):
        raise ValueError(f"{item!r}: {host!r} is not a host name or address {example}")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"{item!r}: the port must be a number, got {port_text!r} {example}")
    try:
        port(port_text)
    except ValueError as error:
        raise ValueError(f"{item!r}: {error}") from None


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def positive_float(text: str) -> float:
    """A float above 0."""
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A float of at least 0."""
    value = float(text)
    if not value >= 0:
        raise ValueError(f"must be >= 0, got {text}")
    return value


def model_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of model names, e.g. ``lstm,logreg``."""
    from stream_lstm.evaluation.prequential import MODEL_NAMES

    names = tuple(name.strip() for name in str(text).split(",") if name.strip())
    unknown = [name for name in names if name not in MODEL_NAMES]
    if unknown or not names:
        raise ValueError(
            f"unknown model(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(MODEL_NAMES)}"
        )
    return names


def kafka_client(value: str) -> str:
    """A ``--kafka-client`` value whose library is installed."""
    from stream_lstm.kafka.connect import check_kafka_client

    try:
        return check_kafka_client(value)
    except ConfigError as error:  # argparse turns ValueError into a usage message
        raise ValueError(str(error)) from None


def max_abs_value(text: str) -> float:
    """A magnitude limit: above 0 and at most the 1e18 the learner is built for."""
    from stream_lstm.messages.events import MAX_ABS_VALUE

    value = float(text)
    if not 0 < value <= MAX_ABS_VALUE:
        raise ValueError(f"must be above 0 and at most {MAX_ABS_VALUE:g}, got {text}")
    return value


@dataclass(frozen=True)
class Setting:
    """One configurable value: its name, how to parse it, its default and what it means."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str | None = None
    #: A password, key or token: ``parse`` gives a :class:`~stream_lstm.config.secret.Secret`,
    #: and the value may also come from a file (``--NAME-file``, ``..._FILE``, ``name_file``).
    secret: bool = False
    #: Given any number of times (the flag repeats; the environment variable holds one value per
    #: line; TOML takes a list); resolves to a tuple of parsed values.
    repeated: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def file_name(self) -> str:
        """A secret setting's name for "read it from this file"."""
        return self.name + "_file"

    @property
    def shown_default(self) -> str:
        """The default as the help and the reference show it (``none`` when there is none)."""
        if isinstance(self.default, tuple):
            return ",".join(self.default) or "none"
        return "none" if self.default is None else str(self.default)


def add_settings(parser: argparse.ArgumentParser, settings: Sequence[Setting]) -> None:
    """Add a flag per setting; its help names the default and the environment variable."""
    for setting in settings:
        parse = setting.parse
        kwargs: dict[str, Any] = {
            "dest": setting.name,
            "default": None,  # None means "not given", so the environment or file can apply
            "metavar": setting.metavar or setting.name.upper(),
            "help": f"{setting.help} (default: {setting.shown_default}; env {setting.env})",
        }
        if parse is parse_bool or parse is parse_auto_bool:  # a bare flag means true
            kwargs["type"] = argument_type(parse)
            kwargs["nargs"] = "?"
            kwargs["const"] = True
        else:
            kwargs["type"] = argument_type(parse)
        if setting.repeated:
            kwargs["action"] = "append"
            kwargs["help"] = f"{setting.help} (repeatable; env {setting.env}, one per line)"
        parser.add_argument(setting.flag, **kwargs)
        if setting.secret:
            parser.add_argument(
                setting.flag + "-file",
                dest=setting.file_name,
                default=None,
                metavar="FILE",
                help=f"read {setting.flag[2:]} from FILE (env {setting.env}_FILE)",
            )


def resolve_settings(
    args: argparse.Namespace,
    settings: Sequence[Setting],
    *,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The value of every setting: flag, else environment, else ``--config`` file, else default."""
    environ = os.environ if environ is None else environ
    config_path = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG")
    from_file = load_toml(config_path, settings) if config_path else {}
    values: dict[str, Any] = {}
    for setting in settings:
        given = getattr(args, setting.name, None)
        secret_file = getattr(args, setting.file_name, None) if setting.secret else None
        if given is not None:
            values[setting.name] = tuple(given) if setting.repeated else given
        elif secret_file is not None:
            values[setting.name] = read_secret_file(secret_file, setting.flag + "-file")
        elif setting.env in environ:
            raw = environ[setting.env]
            values[setting.name] = _parse(setting, raw, f"{setting.env}={_shown(setting, raw)}")
        elif setting.secret and setting.env + "_FILE" in environ:
            values[setting.name] = read_secret_file(environ[setting.env + "_FILE"], f"${setting.env}_FILE")
        elif setting.name in from_file:
            raw = from_file[setting.name]
            values[setting.name] = _parse(
                setting, raw, f"{config_path}: {setting.name} = {_shown(setting, raw)}"
            )
        elif setting.secret and setting.file_name in from_file:
            values[setting.name] = read_secret_file(from_file[setting.file_name], f"{config_path}")
        else:
            values[setting.name] = setting.default
    return values


def load_toml(path: str | Path, settings: Sequence[Setting]) -> dict[str, Any]:
    """Read flat ``name = value`` pairs; names may use ``-`` or ``_``; unknown names are errors."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    known = {setting.name for setting in settings}
    known |= {setting.file_name for setting in settings if setting.secret}
    values = {str(key).replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"config file {path} sets unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    return values


def _parse(setting: Setting, raw: Any, where: str) -> Any:
    if setting.repeated:
        items = (
            raw
            if isinstance(raw, (list, tuple))
            else [line for line in str(raw).splitlines() if line.strip()]
        )
        return tuple(_parse_one(setting, item, where) for item in items)
    if isinstance(raw, (list, tuple)):
        raw = ",".join(str(item) for item in raw)
    return _parse_one(setting, raw, where)


def _parse_one(setting: Setting, raw: Any, where: str) -> Any:
    try:
        return setting.parse(raw if isinstance(raw, str) else str(raw))
    except (TypeError, ValueError) as error:
        # A secret's parser never echoes the value; others may, as their messages help.
        detail = str(error)
        if len(detail) > _SHOWN_CHARS * 2:  # a parser's message may quote the value
            detail = detail[: _SHOWN_CHARS * 2] + "..."
        raise ConfigError(f"{where}: {detail}") from None


def _shown(setting: Setting, raw: Any) -> str:
    """A value as an error message shows where it came from: never a secret, never a whole page."""
    if setting.secret:
        return MASK
    text = str(raw)
    if len(text) > _SHOWN_CHARS or not text.isprintable():
        return repr(text[:_SHOWN_CHARS]) + ("..." if len(text) > _SHOWN_CHARS else "")
    return text


#: An error message shows at most this many characters of a value from the environment or a file.
_SHOWN_CHARS = 80


def known_variables(settings: Iterable[Setting]) -> set[str]:
    """Every ``STREAM_LSTM_*`` variable these settings read (and ``STREAM_LSTM_CONFIG``)."""
    known = {ENV_PREFIX + "CONFIG"}
    for setting in settings:
        known.add(setting.env)
        if setting.secret:
            known.add(setting.env + "_FILE")
    return known


def _closest(name: str, known: set[str]) -> str | None:
    """The known variable ``name`` shortens (``..._BOOTSTRAP``) or misspells, if one is close."""
    suffixes = {variable.removeprefix(ENV_PREFIX): variable for variable in sorted(known)}
    given = name.removeprefix(ENV_PREFIX)
    longer = [variable for suffix, variable in suffixes.items() if suffix.startswith(given)]
    if longer:
        return longer[0]
    close = difflib.get_close_matches(given, list(suffixes), n=1, cutoff=0.8)
    return suffixes[close[0]] if close else None


def unknown_variable_warnings(environ: Mapping[str, str], known: set[str]) -> list[str]:
    """One line per ``STREAM_LSTM_*`` variable of ``environ`` that is not in ``known``, naming
    the known one it may be a misspelling of: a misspelt variable would otherwise be ignored."""
    warnings = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        hint = _closest(name, known)
        hint = f"; did you mean {hint}?" if hint else ""
        warnings.append(f"{name} is not a setting of stream-lstm and is ignored{hint}")
    return warnings


def argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse ``type``: its ValueError's message becomes the usage error's, where
    argparse would only say "invalid value"."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except (TypeError, ValueError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__
    return convert
