"""The checkpoint format: a tree of JSON values and NumPy arrays as bytes, and back.

Layout (every length big-endian, every part bounds-checked when read)::

    MAGIC                      b"STREAM-LSTM-CHECKPOINT\\n"
    version                    2 bytes: SCHEMA (2); 1 was the pickle format, never read here
    header length, header      4 bytes, then UTF-8 JSON: {"format": FORMAT_NAME, "schema": 2,
                               "kind": ..., "arrays": [{"dtype": "<f4", "shape": [3, 4]}, ...]}
    tree length, tree          4 bytes, then UTF-8 JSON: the tree, each array as {"$array": N}
    array bytes                each array's bytes in the header's order, C order, little-endian

Only numbers are arrays (:data:`DTYPES`); everything else is JSON, which has no way to name a
class or a function, so decoding runs no code the bytes choose. The decoder refuses whatever is
not exactly this: a NaN or an infinity in the JSON (non-finite numbers live in arrays), a key
given twice, an array whose bytes do not add up, bytes left over. A dict key of the tree that
starts with ``$`` is written with one more ``$``, so that no key of the data (a feature name, an
entity key) can pass for an array.

>>> tree = {"n": 3, "w": np.arange(3, dtype=np.float32), "$x": [True, None]}
>>> kind, back = decode_tree(encode_tree(tree, "test"), "bytes", ("test",))
>>> kind, back["n"], back["w"].tolist(), back["$x"]
('test', 3, [0.0, 1.0, 2.0], [True, None])
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from typing import Any

import numpy as np

from stream_lstm.errors import CheckpointError, CheckpointRejected

MAGIC = b"STREAM-LSTM-CHECKPOINT\n"
#: The version of this format; what follows the magic.
SCHEMA = 2
#: The version of the pickle format (the first versions of stream-lstm), refused on load.
PICKLE_SCHEMA = 1
FORMAT_NAME = "stream-lstm-checkpoint"
#: The array types a checkpoint may hold: plain numbers, little-endian.
DTYPES = ("|b1", "|i1", "|u1", "<i2", "<i4", "<i8", "<f4", "<f8")
#: The most dimensions an array may have.
MAX_DIMENSIONS = 8
_ARRAY = "$array"
_PREFIX = len(MAGIC) + 2


def encode_tree(tree: Any, kind: str) -> bytes:
    """``tree`` (JSON values and NumPy arrays) as the bytes of a checkpoint of ``kind``.

    Raises :class:`CheckpointError` for what the format cannot hold (another type of value, a
    non-finite float outside an array, an array of objects).
    """
    arrays: list[np.ndarray] = []
    try:
        data_tree = _with_array_references(tree, arrays, "state")
        header = {
            "format": FORMAT_NAME,
            "schema": SCHEMA,
            "kind": kind,
            "arrays": [{"dtype": array.dtype.str, "shape": list(array.shape)} for array in arrays],
        }
        header_bytes = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
        tree_bytes = json.dumps(data_tree, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"cannot serialise the checkpoint state: {error}") from error
    parts = [MAGIC, SCHEMA.to_bytes(2, "big")]
    for block in (header_bytes, tree_bytes):
        parts += [len(block).to_bytes(4, "big"), block]
    parts += [array.tobytes(order="C") for array in arrays]
    return b"".join(parts)


def _with_array_references(value: Any, arrays: list[np.ndarray], where: str) -> Any:
    """``value`` with each array replaced by its reference and each ``$`` key escaped."""
    if isinstance(value, np.ndarray):
        if value.dtype.newbyteorder("<").str not in DTYPES and value.dtype.str not in DTYPES:
            raise TypeError(f"{where}: arrays of {value.dtype} cannot be saved")
        little = value.astype(value.dtype.newbyteorder("<"), copy=False)
        arrays.append(little)  # tobytes(order="C") lays it out
        return {_ARRAY: len(arrays) - 1}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: the key {key!r} is not a string")
            out["$" + key if key.startswith("$") else key] = _with_array_references(
                item, arrays, f"{where}.{key}"
            )
        return out
    if isinstance(value, (list, tuple)):
        return [_with_array_references(item, arrays, f"{where}[{i}]") for i, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: the number {value} is not finite")
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return _with_array_references(value.item(), arrays, where)
    raise TypeError(f"{where}: a {type(value).__name__} cannot be saved")


def checkpoint_schema(data: bytes) -> int | None:
    """The format version of checkpoint bytes, or ``None`` if they are not a checkpoint."""
    if len(data) < _PREFIX or not data.startswith(MAGIC):
        return None
    return int.from_bytes(data[len(MAGIC) : _PREFIX], "big")


def decode_tree(data: bytes, where: str, kinds: Collection[str]) -> tuple[str, Any]:
    """The kind (one of ``kinds``) and the tree of checkpoint bytes; ``where`` names them in errors.

    Raises :class:`CheckpointRejected` for anything else, and only that.
    """
    schema = checkpoint_schema(data)
    if schema is None:
        raise CheckpointRejected(f"{where} is not a stream-lstm checkpoint", "not_a_checkpoint")
    if schema == PICKLE_SCHEMA:
        raise CheckpointRejected(
            f"{where} is a checkpoint of the old pickle format, which is never loaded (loading it "
            "could run any code its writer chose); if you wrote it yourself, convert it once with "
            "`stream-lstm convert-checkpoint OLD NEW --trust-pickle`",
            "old_format",
        )
    if schema != SCHEMA:
        raise CheckpointRejected(
            f"{where} has checkpoint format {schema}; this version of stream-lstm reads format {SCHEMA}",
            "unknown_version",
        )
    try:
        return _decode(memoryview(data), where, kinds)
    except CheckpointRejected:
        raise
    except Exception as error:  # whatever hostile bytes make the parser raise: damaged
        raise CheckpointRejected(f"checkpoint {where} is damaged: {error}", "damaged") from None


def _damaged(where: str, what: str) -> CheckpointRejected:
    return CheckpointRejected(f"checkpoint {where} is damaged: {what}", "damaged")


def _decode(data: memoryview, where: str, kinds: Collection[str]) -> tuple[str, Any]:
    position = _PREFIX
    blocks = []
    for name in ("header", "tree"):
        if len(data) - position < 4:
            raise _damaged(where, f"it ends before its {name}")
        length = int.from_bytes(data[position : position + 4], "big")
        position += 4
        if length > len(data) - position:
            raise _damaged(where, f"its {name} is cut short")
        blocks.append(bytes(data[position : position + length]))
        position += length
    header = _parse_json(blocks[0], where, None)
    if not isinstance(header, dict) or set(header) != {"format", "schema", "kind", "arrays"}:
        raise _damaged(where, "its header is not a checkpoint header")
    if header["format"] != FORMAT_NAME or header["schema"] != SCHEMA:
        raise _damaged(where, "its header names another format")
    kind = header["kind"]
    if not isinstance(kind, str) or kind not in kinds:
        raise _damaged(where, f"it holds a checkpoint of an unknown kind {str(kind)[:20]!r}")
    arrays = _read_arrays(header["arrays"], data, position, where)
    return kind, _parse_json(blocks[1], where, arrays)


def _read_arrays(table: Any, data: memoryview, position: int, where: str) -> list[np.ndarray]:
    if not isinstance(table, list):
        raise _damaged(where, "its array table is not a list")
    arrays = []
    for index, entry in enumerate(table):
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape"}:
            raise _damaged(where, f"array {index} is not described by a dtype and a shape")
        dtype, shape = entry["dtype"], entry["shape"]
        if dtype not in DTYPES:
            raise _damaged(where, f"array {index} has the type {str(dtype)[:20]!r}, which is not allowed")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMENSIONS
            or not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape)
        ):
            raise _damaged(where, f"array {index} has no valid shape")
        itemsize = np.dtype(dtype).itemsize
        count = math.prod(shape)  # exact: Python integers do not overflow
        if count * itemsize > len(data) - position:
            raise _damaged(where, f"array {index} is cut short")
        end = position + count * itemsize
        array = np.frombuffer(data[position:end], dtype=dtype).reshape(shape).copy()
        arrays.append(array.astype(array.dtype.newbyteorder("="), copy=False))
        position = end
    if position != len(data):
        raise _damaged(where, f"{len(data) - position} bytes follow its last array")
    return arrays


def _parse_json(block: bytes, where: str, arrays: list[np.ndarray] | None) -> Any:
    """Strict JSON: no NaN or infinity, no key twice; with ``arrays``, the tree's references
    resolved and its escaped keys restored."""

    def refuse_constant(name: str) -> Any:
        raise _damaged(where, f"it holds {name}, which is not a JSON number")

    def finite_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise _damaged(where, f"it holds the number {text[:20]}, which does not fit a float")
        return value

    def mapping(pairs: list[tuple[str, Any]]) -> Any:
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            raise _damaged(where, "a key is given twice")
        if arrays is None:
            return dict(pairs)
        if keys == [_ARRAY]:
            index = pairs[0][1]
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(arrays):
                raise _damaged(where, "it refers to an array it does not hold")
            return arrays[index]
        out = {}
        for key, value in pairs:
            if key.startswith("$"):
                if not key.startswith("$$"):
                    raise _damaged(where, f"the key {key[:20]!r} is not allowed")
                key = key[1:]
            out[key] = value
        return out

    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise _damaged(where, "it holds text that is not UTF-8") from None
    return json.loads(
        text, parse_constant=refuse_constant, parse_float=finite_float, object_pairs_hook=mapping
    )
