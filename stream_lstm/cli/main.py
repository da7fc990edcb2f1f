"""The ``stream-lstm`` command line: the parser of every command, and the dispatch to its handler.

Each command lives in a module of its own that adds its arguments and its handler
(:mod:`~stream_lstm.cli.evaluate`, :mod:`~stream_lstm.cli.run`, :mod:`~stream_lstm.cli.produce`,
the local tools broker, demo and generate in :mod:`~stream_lstm.cli.local`, and
:mod:`~stream_lstm.cli.convert_checkpoint`); the settings they
read are declared in :mod:`stream_lstm.config.declared`. A handler takes the parsed arguments, the
resolved settings and its command's parser (for usage errors) and returns the exit status.

Every usage error ends the same way, with the command's own usage and exit status 2: a flag
argparse refuses, a setting from the environment or the ``--config`` file that its parser refuses,
and a handler's ``parser.error``. No parser takes abbreviations (``--bootstrap`` is not
``--bootstrap-servers``), and a ``STREAM_LSTM_*`` variable that no setting reads is warned about.
"""

from __future__ import annotations

import argparse
import difflib
import os
import select
import sys
from collections.abc import Sequence
from typing import Any

from stream_lstm import __version__
from stream_lstm.cli import convert_checkpoint, evaluate, local, produce, run
from stream_lstm.config.secret import redact
from stream_lstm.config.setting import (
    Setting,
    known_variables,
    resolve_settings,
    unknown_variable_warnings,
)
from stream_lstm.errors import ConfigError, StreamLSTMError


class CommandParser(argparse.ArgumentParser):
    """An argument parser that takes no abbreviations of its flags: a prefix of a flag is a usage
    error, never another flag (``--bootstrap 1`` would otherwise be ``--bootstrap-servers 1``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = CommandParser(
        prog="stream-lstm",
        description="Online LSTM predictions for ordered event streams, compared with baselines.",
    )
    parser.add_argument("--version", action="version", version=f"stream-lstm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    commands.required = True
    evaluate.add_command(commands)
    run.add_command(commands)
    produce.add_command(commands)
    local.add_broker_command(commands)
    local.add_demo_command(commands)
    local.add_generate_command(commands)
    convert_checkpoint.add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args, unrecognized = parser.parse_known_args(argv)
    command = command_parsers(parser)[args.command]
    if unrecognized:
        command.error(unrecognized_message(command, unrecognized))
    for warning in unknown_variable_warnings(os.environ, known_variables(every_setting(parser))):
        print(f"stream-lstm: warning: {warning}", file=sys.stderr)
    try:
        settings = resolve_settings(args, args.settings)
    except ConfigError as error:
        # A value from the environment or the settings file is as much a usage error as a flag.
        command.print_usage(sys.stderr)
        print(f"{command.prog}: error: {redact(str(error))}", file=sys.stderr)
        return 2
    try:
        status = int(args.handler(args, settings, command) or 0)
        sys.stdout.flush()  # a closed pipe is met here, not in the interpreter's exit
        return status
    except StreamLSTMError as error:
        print(f"stream-lstm: error: {redact(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stream-lstm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_is_closed():
            raise  # a socket or a child process, not our reader: a real error
        # Whoever read stdout has gone (`stream-lstm evaluate ... | head`): stop quietly, as a
        # Unix tool killed by SIGPIPE would, and keep the exit flush from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def command_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's own parser, by name: its usage is the one a usage error of it shows."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def unrecognized_message(command: argparse.ArgumentParser, unrecognized: list[str]) -> str:
    """argparse's message for flags the command lacks, with the flag a misspelt or shortened
    one may mean (a flag is never taken from a prefix of it)."""
    flags = sorted(flag for action in command._actions for flag in action.option_strings)
    hints = []
    for text in unrecognized:
        given = text.split("=", 1)[0]
        if not given.startswith("--"):
            continue
        longer = [flag for flag in flags if flag.startswith(given)]
        if longer:
            hints.append(f"flags are never abbreviated: did you mean {' or '.join(longer[:3])}?")
        elif close := difflib.get_close_matches(given, flags, n=1, cutoff=0.75):
            hints.append(f"did you mean {close[0]}?")
    message = f"unrecognized arguments: {' '.join(unrecognized)}"
    return "; ".join([message, *hints])


def every_setting(parser: argparse.ArgumentParser) -> list[Setting]:
    """The settings of every command (a variable one command reads is known to all)."""
    return [
        setting
        for command in command_parsers(parser).values()
        for setting in command.get_default("settings") or ()
    ]


def _stdout_is_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (its write end then polls as an error)."""
    try:
        descriptor = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (a test's capture, a redirect)
        return False
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
