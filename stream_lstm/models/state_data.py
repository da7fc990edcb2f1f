"""A state as data: JSON values and NumPy arrays, and the strict reading of one.

Every part of a checkpoint (each model, each scorer, the evaluator, the key states of a
partition) has a data form: a tree of dicts with string keys, lists, strings, integers, finite
floats, booleans, ``None`` and NumPy arrays of plain numbers. The parts build it with
``to_state()`` and read it back with ``from_state()``; :mod:`stream_lstm.state.codec` turns the
tree into bytes and back. Nothing in it names a class or a function, so reading a checkpoint runs
no code that the checkpoint chose.

A tree read from a checkpoint is hostile input. :class:`Fields` reads one dict of it: each field
must be there, no other may be, and each must have the type, range, dtype and shape the reader
asks for; anything else is :class:`~stream_lstm.errors.CheckpointRejected` with reason
``damaged``, naming the path of the field.

>>> fields = Fields({"count": 3, "name": "a"}, "state", ("count", "name"))
>>> fields.int("count"), fields.str("name")
(3, 'a')
>>> Fields({"count": -1}, "state", ("count",)).int("count")
Traceback (most recent call last):
...
stream_lstm.errors.CheckpointRejected: state.count: expected an integer from 0, got -1
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import numpy as np

from stream_lstm.errors import CheckpointRejected, ConfigError

_Checked = TypeVar("_Checked")

#: A tree of JSON values and NumPy arrays (see the module doc).
State = dict[str, Any]


def damaged(where: str, what: str) -> CheckpointRejected:
    """The error for a part of a checkpoint that is not what it must be."""
    return CheckpointRejected(f"{where}: {what}", "damaged")


def checked_by(check: Callable[[Any], _Checked], value: Any, where: str) -> _Checked:
    """``check(value)`` for a value read from a checkpoint at ``where``: the check a setting's
    value passes, so that a checkpoint holds no value the setting refuses; its
    :class:`~stream_lstm.errors.ConfigError` becomes a refusal of the checkpoint as damaged."""
    try:
        return check(value)
    except ConfigError as error:
        raise damaged(where, str(error)) from None


def _shown(value: Any) -> str:
    """``value`` for an error message, cut short (a hostile one may be huge)."""
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Fields:
    """One dict of a state tree read strictly: ``names`` are exactly the fields it must hold.

    ``where`` is the path of the dict, for error messages.
    """

    def __init__(self, tree: Any, where: str, names: Collection[str]) -> None:
        if not isinstance(tree, dict):
            raise damaged(where, f"expected a mapping, got {_shown(tree)}")
        missing = [name for name in names if name not in tree]
        extra = [name for name in tree if name not in names]
        if missing or extra:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unexpected {', '.join(_shown(name) for name in extra[:5])}"] if extra else []
            )
            raise damaged(where, "; ".join(parts))
        self.tree = tree
        self.where = where

    def path(self, name: str) -> str:
        return f"{self.where}.{name}"

    def raw(self, name: str) -> Any:
        """The field as it is, for a reader of its own (e.g. :meth:`nested`)."""
        return self.tree[name]

    def nested(self, name: str, names: Collection[str]) -> Fields:
        """The field, a dict, read with ``names``."""
        return Fields(self.tree[name], self.path(name), names)

    def int(self, name: str, *, low: int = 0, high: int | None = None) -> int:
        value = self.tree[name]
        return checked_int(value, self.path(name), low=low, high=high)

    def float(self, name: str, *, low: float = -math.inf, high: float = math.inf) -> float:
        value = self.tree[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise damaged(self.path(name), f"expected a number, got {_shown(value)}")
        number = float(value)
        if not (math.isfinite(number) and low <= number <= high):
            expected = f"a finite number in [{low}, {high}]"
            raise damaged(self.path(name), f"expected {expected}, got {_shown(value)}")
        return number

    def bool(self, name: str) -> bool:
        value = self.tree[name]
        if not isinstance(value, bool):
            raise damaged(self.path(name), f"expected true or false, got {_shown(value)}")
        return value

    def str(self, name: str, *, choices: Collection[str] | None = None) -> str:
        value = self.tree[name]
        if not isinstance(value, str) or (choices is not None and value not in choices):
            expected = "a string" if choices is None else f"one of {', '.join(sorted(choices))}"
            raise damaged(self.path(name), f"expected {expected}, got {_shown(value)}")
        return value

    def strings(self, name: str, *, unique: bool = True) -> list[str]:
        """A list of strings (distinct ones, with ``unique``)."""
        return checked_strings(self.tree[name], self.path(name), unique=unique)

    def list(self, name: str) -> list[Any]:
        value = self.tree[name]
        if not isinstance(value, list):
            raise damaged(self.path(name), f"expected a list, got {_shown(value)}")
        return value

    def mapping(self, name: str) -> dict[str, Any]:
        """A dict with any (string) keys, its values unchecked."""
        value = self.tree[name]
        if not isinstance(value, dict):
            raise damaged(self.path(name), f"expected a mapping, got {_shown(value)}")
        return value

    def array(self, name: str, dtype: str, shape: Sequence[int | None]) -> np.ndarray:
        """A NumPy array of ``dtype`` whose shape matches ``shape`` (``None``: any length)."""
        return checked_array(self.tree[name], self.path(name), dtype, shape)


def checked_int(value: Any, where: str, *, low: int = 0, high: int | None = None) -> int:
    """``value`` if it is an integer in ``[low, high]`` (a boolean is not one)."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not is_int or value < low or (high is not None and value > high):
        expected = f"an integer from {low}" + ("" if high is None else f" to {high}")
        raise damaged(where, f"expected {expected}, got {_shown(value)}")
    return value


def checked_strings(value: Any, where: str, *, unique: bool = True) -> list[str]:
    """``value`` if it is a list of strings, distinct ones with ``unique``."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise damaged(where, f"expected a list of strings, got {_shown(value)}")
    if unique and len(set(value)) != len(value):
        raise damaged(where, "holds a string twice")
    return value


def checked_array(value: Any, where: str, dtype: str, shape: Sequence[int | None]) -> np.ndarray:
    """``value`` if it is an array of ``dtype`` (a NumPy name: ``float32``, ``int64``, ``bool``,
    ...) and of ``shape`` (``None`` matches any length)."""
    if not isinstance(value, np.ndarray) or value.dtype != np.dtype(dtype):
        raise damaged(where, f"expected a {dtype} array, got {_shown(value)}")
    if value.ndim != len(shape) or any(
        size is not None and size != actual for size, actual in zip(shape, value.shape, strict=True)
    ):
        wanted = tuple("*" if size is None else size for size in shape)
        raise damaged(where, f"expected shape {wanted}, got {value.shape}")
    return value


def labels_state(labels: dict[str, int]) -> State:
    """Latest labels by key as data: the keys in order, the labels as an int8 array."""
    return {"keys": list(labels), "labels": np.fromiter(labels.values(), dtype=np.int8, count=len(labels))}


def labels_from_state(tree: Any, where: str) -> dict[str, int]:
    """Read back :func:`labels_state`: distinct keys, each with a label of 0 or 1."""
    fields = Fields(tree, where, ("keys", "labels"))
    keys = fields.strings("keys")
    labels = fields.array("labels", "int8", (len(keys),))
    if ((labels != 0) & (labels != 1)).any():
        raise damaged(fields.path("labels"), "a label is neither 0 nor 1")
    return dict(zip(keys, labels.tolist(), strict=True))
