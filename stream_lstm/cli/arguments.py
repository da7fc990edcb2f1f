"""Command-line arguments that several commands share (the settings themselves are in config/)."""

from __future__ import annotations

import argparse

from stream_lstm.config.setting import argument_type, positive_int

#: What ``parser.add_subparsers()`` returns; each command module adds its parser to it.
SubParsers = argparse._SubParsersAction


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config FILE.toml``: the settings file read under the flags and the environment."""
    parser.add_argument("--config", metavar="FILE.toml", help="read settings from this TOML file")


def add_stream_arguments(
    parser: argparse.ArgumentParser, *, events: int, seed: bool = True, note: str = ""
) -> None:
    """--events, --keys and --seed of the generated stream."""
    parser.add_argument(
        "--events", type=argument_type(positive_int), default=events, help=f"{note}events (default: {events})"
    )
    parser.add_argument(
        "--keys", type=argument_type(positive_int), default=1000, help=f"{note}keys (default: 1000)"
    )
    if seed:
        parser.add_argument("--seed", type=int, default=0, help=f"{note}seed of the stream (default: 0)")
