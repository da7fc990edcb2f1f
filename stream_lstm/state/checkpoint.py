"""Atomic checkpoints of an instance's or a partition's state, as data that runs no code.

The bytes are the format of :mod:`stream_lstm.state.codec`: JSON and arrays of numbers, read back
with every field checked (:mod:`stream_lstm.state.state_tree`). Whatever bytes a file or a record
of the checkpoint topic holds, :func:`decode_checkpoint` returns a state or raises
:class:`~stream_lstm.errors.CheckpointRejected`, and nothing else: checkpoints of the old pickle
format are recognised and refused (``old_format``), never unpickled
(``stream-lstm convert-checkpoint`` converts a trusted one, :mod:`stream_lstm.state.legacy_pickle`).

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed
over the old one, so a crash at any moment leaves either the old or the new checkpoint, never a
torn one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from stream_lstm.errors import CheckpointError, CheckpointRejected
from stream_lstm.state.codec import MAGIC as MAGIC
from stream_lstm.state.codec import decode_tree, encode_tree
from stream_lstm.state.state_tree import INSTANCE, PARTITION, state_kind, state_to_tree, tree_to_state
from stream_lstm.state.store import InstanceState, PartitionState


def encode_checkpoint(state: InstanceState | PartitionState) -> bytes:
    """``state`` as the bytes of a checkpoint (:class:`CheckpointError` if it cannot be one)."""
    try:
        kind = state_kind(state)
        tree = state_to_tree(state)
    except CheckpointError:
        raise
    except Exception as error:  # a part that has no data form: "cannot save"
        raise CheckpointError(f"cannot serialise the checkpoint state: {error}") from error
    return encode_tree(tree, kind)


def decode_checkpoint(data: bytes, where: str) -> InstanceState | PartitionState:
    """Read back what :func:`encode_checkpoint` made; ``where`` names the source in errors.

    Raises :class:`CheckpointRejected`, and no other error, for any bytes that are not such a
    checkpoint.
    """
    kind, tree = decode_tree(data, where, (INSTANCE, PARTITION))
    try:
        return tree_to_state(tree, kind, where)
    except CheckpointRejected as error:
        raise CheckpointRejected(f"checkpoint {where} is damaged: {error}", error.reason) from None
    except Exception as error:  # a check missed: still refused, never another error
        raise CheckpointRejected(f"checkpoint {where} is damaged: {error!r}", "damaged") from None


def save_checkpoint(path: str | Path, state: InstanceState | PartitionState) -> int:
    """Write ``state`` atomically to ``path``; return the number of bytes written."""
    path = Path(path)
    data = encode_checkpoint(state)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise CheckpointError(f"cannot write checkpoint {path}: {error}") from error
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {path}: {error}") from error
    _fsync_directory(path.parent)  # make the rename itself durable
    return len(data)


def load_checkpoint(path: str | Path) -> InstanceState | PartitionState:
    """Read back what :func:`save_checkpoint` wrote; :class:`CheckpointError` if it cannot
    (:class:`CheckpointRejected` if the file is not such a checkpoint)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    return decode_checkpoint(data, str(path))


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open directories; the rename is still atomic
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
