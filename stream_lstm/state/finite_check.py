"""Non-finite numbers in a checkpoint's state: found before it is written and after it is read.

A NaN weight poisons every prediction made with it, and a checkpoint would hand it to every
restart. Both checkpoint stores therefore refuse to write, and refuse to load, a state with a
non-finite weight, optimizer average, scaler statistic or key state (:func:`check_finite`).

What is checked is found by duck typing, so this module imports neither torch nor river:

* an instance checkpoint (``evaluator``): each model's ``non_finite_parts()``, for the models that
  have one (the LSTM, or the process running it, and the logistic regression);
* a partition checkpoint (``key_state``): each model's exported key states, whose recurrent states
  and windows (``h0``, ``c0``, ``window``) must be finite; ``last_ts`` may be NaN (no timestamp)
  but not infinite.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from stream_lstm.errors import CheckpointError, CheckpointRejected
from stream_lstm.learner.finite import count_non_finite, describe_count

#: Exported key-state fields that must be finite everywhere.
FINITE_KEY_STATE_FIELDS = ("h0", "c0", "window")
#: Parts named in an error message; the rest are counted.
SHOWN_PARTS = 5


def non_finite_parts(state: Any) -> list[str]:
    """What in ``state`` is not finite, one short description per part (empty when all is).

    ``state`` is an :class:`~stream_lstm.state.directory_store.InstanceState` (or anything with an
    ``evaluator``), a :class:`~stream_lstm.state.directory_store.PartitionState` (or anything with a
    ``key_state``), an evaluator (anything with ``models``) or a single model.
    """
    evaluator = getattr(state, "evaluator", None)
    if evaluator is not None:
        return _model_parts(evaluator)
    key_state = getattr(state, "key_state", None)
    if isinstance(key_state, Mapping):
        return key_state_parts(key_state)
    if isinstance(getattr(state, "models", None), Mapping):
        return _model_parts(state)
    check = getattr(state, "non_finite_parts", None)
    return list(check()) if callable(check) else []


def _model_parts(evaluator: Any) -> list[str]:
    parts = []
    for name, model in evaluator.models.items():
        check = getattr(model, "non_finite_parts", None)
        if callable(check):
            parts += [f"model {name}: {part}" for part in check()]
    return parts


def key_state_parts(key_state: Mapping[str, Any]) -> list[str]:
    """What is not finite in exported key states (model name -> that model's export)."""
    parts = []
    for name, exported in key_state.items():
        if not isinstance(exported, Mapping):
            continue
        # Looked up by name: another model's export (key -> label) may hold any key.
        for field in (*FINITE_KEY_STATE_FIELDS, "last_ts"):
            value = exported.get(field)
            if not isinstance(value, np.ndarray) and not hasattr(value, "is_floating_point"):
                continue
            bad = count_non_finite(value, nan_allowed=field == "last_ts")
            if bad:
                total = value.size if isinstance(value, np.ndarray) else value.numel()
                kind = "infinite" if field == "last_ts" else "not finite"
                parts.append(describe_count(f"key state {name}.{field}", bad, total, kind))
    return parts


def check_finite(state: Any, where: str, *, saving: bool) -> None:
    """Raise :class:`CheckpointError` naming ``where`` if ``state`` holds non-finite values.

    ``saving``: the checkpoint is about to be written (nothing is written), else it was just read
    (it is not loaded: :class:`CheckpointRejected`, reason ``damaged``).
    """
    parts = non_finite_parts(state)
    if not parts:
        return
    listed = "; ".join(parts[:SHOWN_PARTS])
    if len(parts) > SHOWN_PARTS:
        listed += f"; and {len(parts) - SHOWN_PARTS} more"
    if saving:
        raise CheckpointError(f"checkpoint {where} not written: it would hold non-finite values: {listed}")
    raise CheckpointRejected(f"checkpoint {where} refused: it holds non-finite values: {listed}", "damaged")


def checked_state(state: Any, kind: type, where: str) -> Any:
    """``state`` as read from ``where``, once it is found to be a ``kind`` holding only finite
    values; every store checks what it loads with this (:class:`CheckpointRejected` otherwise)."""
    if not isinstance(state, kind):
        raise CheckpointRejected(f"{where} does not hold a {kind.__name__}", "damaged")
    check_finite(state, where, saving=False)
    return state
