"""Write a file atomically: a temporary file in the same directory, flushed, renamed over it.

A crash at any moment leaves the old or the new content, never a torn one. The directory store
writes signed checkpoints with it (:mod:`stream_lstm.state.signing`); unsigned ones go through
:func:`stream_lstm.state.checkpoint.save_checkpoint`, which does the same.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from stream_lstm.errors import CheckpointError


def write_atomically(path: Path, data: bytes) -> int:
    """Write ``data`` to ``path`` atomically and durably; return its length.
    :class:`CheckpointError` when it cannot (the old file, if any, is left as it was)."""
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
    try:  # make the rename itself durable; some platforms cannot open a directory
        descriptor = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return len(data)
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
    return len(data)
