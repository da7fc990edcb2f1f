"""Exported key states of the LSTM read from a checkpoint: checked, without torch.

A partition's checkpoint holds what :meth:`~stream_lstm.learner.key_state.KeyStateStore.export`
gave for its keys, with the learner's feature layout. The store that loads it checks it here,
where torch is not imported (the service's process reads partition checkpoints), before any
learner sees it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stream_lstm.models.state_data import Fields, State, checked_int, damaged

#: ``prev_label`` of a key without a label yet.
NO_LABEL = -1


def check_key_export(tree: Any, where: str) -> State:
    """An exported key state read from a checkpoint (:meth:`KeyStateStore.export` with the
    learner's ``feature_columns``), checked to be consistent in itself; its sizes are checked
    against the learner that imports it."""
    if isinstance(tree, dict) and "trend" not in tree:  # exported before trend inputs
        tree = {**tree, "trend": None}
    fields = Fields(tree, where, (*_EXPORT_FIELDS, "feature_columns", "trend"))
    keys = fields.strings("keys")
    count = len(keys)
    h0 = fields.array("h0", "float32", (count, None))
    c0 = fields.array("c0", "float32", h0.shape)
    window = fields.array("window", "float32", (count, None, None))
    window_len = fields.array("window_len", "int64", (count,))
    prev_label = fields.array("prev_label", "int8", (count,))
    last_ts = fields.array("last_ts", "float64", (count,))
    trend = None if fields.raw("trend") is None else fields.array("trend", "float32", (count, None, None))
    if trend is not None and not np.isfinite(trend).all():
        raise damaged(fields.path("trend"), "an average is not finite")
    if ((window_len < 0) | (window_len > window.shape[1])).any():
        raise damaged(fields.path("window_len"), "a window length is longer than the window")
    if ((prev_label < NO_LABEL) | (prev_label > 1)).any():
        raise damaged(fields.path("prev_label"), "a label is not -1, 0 or 1")
    columns = fields.mapping("feature_columns")
    at = fields.path("feature_columns")
    for name, column in columns.items():
        checked_int(column, f"{at}.{name}", high=max(window.shape[2] - 1, 0))
    if len(set(columns.values())) != len(columns):
        raise damaged(at, "two features share a column")
    exported = {
        "keys": keys,
        "h0": h0,
        "c0": c0,
        "window": window,
        "window_len": window_len,
        "prev_label": prev_label,
        "last_ts": last_ts,
        "feature_columns": dict(columns),
    }
    if trend is not None:
        exported["trend"] = trend
    return exported


_EXPORT_FIELDS = ("keys", "h0", "c0", "window", "window_len", "prev_label", "last_ts")
