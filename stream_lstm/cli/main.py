"""The ``stream-lstm`` command line: the parser of every command, and the dispatch to its handler.

Each command lives in a module of its own that adds its arguments and its handler
(:mod:`~stream_lstm.cli.evaluate`, :mod:`~stream_lstm.cli.run`, :mod:`~stream_lstm.cli.produce`,
the local tools broker, demo and generate in :mod:`~stream_lstm.cli.local`, and
:mod:`~stream_lstm.cli.convert_checkpoint`); the settings they
read are declared in :mod:`stream_lstm.config.declared`. A handler takes the parsed arguments, the
resolved settings and the parser (for usage errors) and returns the exit status.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
from collections.abc import Sequence

from stream_lstm import __version__
from stream_lstm.cli import convert_checkpoint, evaluate, local, produce, run
from stream_lstm.config.secret import redact
from stream_lstm.config.setting import resolve_settings
from stream_lstm.errors import StreamLSTMError


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="stream-lstm",
        description="Online LSTM predictions for ordered event streams, compared with baselines.",
    )
    parser.add_argument("--version", action="version", version=f"stream-lstm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    args = parser.parse_args(argv)
    try:
        settings = resolve_settings(args, args.settings)
        status = int(args.handler(args, settings, parser) or 0)
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
