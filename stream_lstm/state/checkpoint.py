"""Atomic checkpoints: a whole evaluator (models, scores) and whatever else the caller adds.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed
over the old one, so a crash at any moment leaves either the old or the new checkpoint, never a
torn one. The payload is a pickle behind a small header: only load checkpoints you wrote.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from stream_lstm.errors import CheckpointError

MAGIC = b"STREAM-LSTM-CHECKPOINT\n"
FORMAT_VERSION = 1

#: Where the modules of checkpoints written before the package was laid out by data path went, so
#: that those checkpoints still load. A pickle names each object's module; only these are renamed.
MOVED_MODULES = {
    "stream_lstm.baselines": "stream_lstm.models.baselines",
    "stream_lstm.evaluation": "stream_lstm.evaluation.prequential",
    "stream_lstm.learner_process": "stream_lstm.learner.process",
    "stream_lstm.state_store": "stream_lstm.state.directory_store",
}


class _MovedModulesUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


def encode_checkpoint(state: Any) -> bytes:
    """``state`` as the bytes of a checkpoint (header and pickle)."""
    try:
        payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:  # pickling can fail in many ways; all mean "cannot save"
        raise CheckpointError(f"cannot serialise the checkpoint state: {error}") from error
    return MAGIC + FORMAT_VERSION.to_bytes(2, "big") + payload


def decode_checkpoint(data: bytes, where: str) -> Any:
    """Read back what :func:`encode_checkpoint` made; ``where`` names the source in errors."""
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{where} is not a stream-lstm checkpoint")
    version = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 2], "big")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{where} has checkpoint format {version}; this version reads {FORMAT_VERSION}")
    try:
        return _MovedModulesUnpickler(io.BytesIO(data[len(MAGIC) + 2 :])).load()
    except Exception as error:
        raise CheckpointError(f"checkpoint {where} is damaged: {error}") from error


def save_checkpoint(path: str | Path, state: Any) -> int:
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


def load_checkpoint(path: str | Path) -> Any:
    """Read back what :func:`save_checkpoint` wrote; :class:`CheckpointError` if it cannot."""
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
