"""``stream-lstm convert-checkpoint``: a trusted checkpoint of the old pickle format, rewritten once
in the data format that the service reads.

The service never loads the old format: a pickle runs whatever code its writer put in it. This
command does, once, for a file or a checkpoint directory that you know you wrote, and only with
``--trust-pickle`` (:mod:`stream_lstm.state.legacy_pickle`). Each file is written atomically, so
``NEW`` may be ``OLD`` (converted in place). A checkpoint topic is not converted: convert a copy
of its checkpoints in a directory, or start a new topic.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from stream_lstm.cli.arguments import SubParsers
from stream_lstm.errors import CheckpointError, ConfigError

#: What the command says when ``--trust-pickle`` is missing.
NOT_TRUSTED = (
    "converting reads the old checkpoint as a pickle, which runs whatever code its writer put in it; "
    "add --trust-pickle if, and only if, you know the checkpoint was written by your own stream-lstm"
)


def add_command(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``convert-checkpoint``."""
    convert = commands.add_parser(
        "convert-checkpoint",
        help="rewrite a trusted checkpoint of the old pickle format (a file or a directory) as data",
        description=(
            "Read a checkpoint file, or every checkpoint of a checkpoint directory, written in the "
            "pickle format (checkpoint format 1, the first versions of stream-lstm), and write it in the "
            "current format, which "
            "stream-lstm run reads (it refuses the old one). Reading a pickle runs any code in it: "
            "only convert checkpoints you wrote, and say so with --trust-pickle. NEW may be OLD."
        ),
    )
    convert.add_argument("old", metavar="OLD", help="an old checkpoint file, or a checkpoint directory")
    convert.add_argument("new", metavar="NEW", help="where to write the converted file or directory")
    convert.add_argument(
        "--trust-pickle",
        action="store_true",
        help="confirm that OLD was written by your own stream-lstm (it is unpickled)",
    )
    convert.set_defaults(handler=convert_command, settings=())


def convert_command(
    args: argparse.Namespace, settings: dict[str, Any], parser: argparse.ArgumentParser
) -> int:
    """Convert ``OLD`` to ``NEW``; print one line per checkpoint."""
    if not args.trust_pickle:
        raise ConfigError(NOT_TRUSTED)
    old, new = Path(args.old), Path(args.new)
    if old.is_dir():
        converted = convert_directory(old, new)
    elif old.is_file():
        converted = [convert_file(old, new)]
    else:
        raise ConfigError(f"{old} is neither a checkpoint file nor a directory")
    for line in converted:
        print(line)
    print(f"stream-lstm: {len(converted)} checkpoint file(s) in {new}", file=sys.stderr)
    return 0


def convert_file(old: Path, new: Path) -> str:
    """Write the trusted old checkpoint ``old`` to ``new`` in the data format (one already in it
    is copied as it is); return what was done."""
    from stream_lstm.state.checkpoint import load_checkpoint, save_checkpoint
    from stream_lstm.state.codec import SCHEMA, checkpoint_schema
    from stream_lstm.state.finite_check import check_finite
    from stream_lstm.state.legacy_pickle import unpickle_trusted_checkpoint

    try:
        data = old.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read {old}: {error}") from error
    if checkpoint_schema(data) == SCHEMA:
        if new.resolve() != old.resolve():
            new.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(old, new)
        return f"{old}: already in the current format"
    state = unpickle_trusted_checkpoint(data, str(old))
    check_finite(state, str(new), saving=True)
    save_checkpoint(new, state)
    load_checkpoint(new)  # read back as the service will, so that a conversion that fails says so now
    return f"{old} -> {new}"


def convert_directory(old: Path, new: Path) -> list[str]:
    """Convert every checkpoint of a checkpoint directory (``instances/*.ckpt`` and
    ``partitions/TOPIC/N.ckpt``, with the epoch files beside them) into ``new``."""
    files = sorted([*old.glob("instances/*.ckpt"), *old.glob("partitions/*/*.ckpt")])
    if not files:
        raise ConfigError(f"{old} holds no checkpoint (instances/*.ckpt, partitions/TOPIC/N.ckpt)")
    done = []
    for path in files:
        target = new / path.relative_to(old)
        done.append(convert_file(path, target))
        epoch = path.with_suffix(".epoch")
        if epoch.exists() and target.with_suffix(".epoch").resolve() != epoch.resolve():
            shutil.copyfile(epoch, target.with_suffix(".epoch"))
    return done
