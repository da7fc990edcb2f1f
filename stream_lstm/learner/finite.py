"""Counting non-finite numbers in arrays, tensors and nested containers, without importing torch.

The learner counts what its guards skipped with these; the checkpoint check
(:mod:`stream_lstm.state.finite_check`) uses them to name the parts of a state that are not finite.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def count_non_finite(value: Any, *, nan_allowed: bool = False) -> int:
    """How many elements of ``value`` (a NumPy array, a torch tensor or a float) are not finite.

    ``nan_allowed``: count only infinities. Anything else (integers, strings, ...) counts 0.

    >>> count_non_finite(np.array([1.0, np.nan, np.inf]))
    2
    >>> count_non_finite(np.array([np.nan, 1.0]), nan_allowed=True)
    0
    >>> count_non_finite(float("inf")), count_non_finite(3), count_non_finite("x")
    (1, 0, 0)
    """
    if isinstance(value, float):
        return int(math.isinf(value) if nan_allowed else not math.isfinite(value))
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fc":
            return 0
        bad = np.isinf(value) if nan_allowed else ~np.isfinite(value)
        return int(np.count_nonzero(bad))
    if callable(getattr(value, "is_floating_point", None)) and callable(getattr(value, "isfinite", None)):
        # A torch tensor (duck-typed: this module does not import torch).
        if not value.is_floating_point():
            return 0
        detached = value.detach()
        bad = detached.isinf() if nan_allowed else detached.isfinite().logical_not()
        return int(bad.sum())
    return 0


def describe_count(what: str, bad: int, total: int, kind: str = "not finite") -> str:
    """``what`` with how many of its ``total`` values are not finite, for a message.

    >>> describe_count("weight w", 3, 1120)
    'weight w (3 of 1,120 values not finite)'
    """
    return f"{what} ({bad:,} of {total:,} values {kind})"
