"""A key store of copies, one per row: how river's predictions leave the learner as it was.

River's ``predict_proba_one`` and ``predict_proba_many`` must not change what a model has
learned, and each row of a ``predict_proba_many`` is predicted as ``predict_proba_one`` would
predict it: as the next event of its key. The learner's forward pass reads and writes its key
store (a new key takes a slot and may evict another, every key seen moves up the LRU order), so
predictions run on a separate store built here: row ``i`` is the key ``str(i)``, holding a copy
of its own key's state (a zero state for a key not tracked). Rows of one key are then predicted
side by side, each from that key's state, in one forward pass, and the learner's own store is
never touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stream_lstm.learner.key_export import NO_LABEL
from stream_lstm.learner.key_state import KeyStateStore

#: Filler of each per-key array for a key the learner does not track: its state when it is new.
_NEW_KEY = {
    "h0": 0.0,
    "c0": 0.0,
    "window": 0.0,
    "window_len": 0,
    "prev_label": NO_LABEL,
    "last_ts": np.nan,
    "trend": 0.0,
}


def row_keys(count: int) -> list[str]:
    """The keys of the rows in a store of :func:`row_copies`: ``"0"``, ``"1"``, ..."""
    return [str(row) for row in range(count)]


def row_copies(store: KeyStateStore, keys: Sequence[str]) -> KeyStateStore:
    """A new store holding, under key ``str(i)``, a copy of the state of ``keys[i]`` in ``store``
    (or the state of a new key), on the same device; ``store`` is read, not changed."""
    exported = store.export(keys)  # each tracked key once
    position = {key: index for index, key in enumerate(exported["keys"])}
    new_key = len(position)  # the row of the filler appended below
    rows = np.fromiter((position.get(key, new_key) for key in keys), np.int64, len(keys))
    copies: dict[str, object] = {"keys": row_keys(len(keys))}
    for name, fill in _NEW_KEY.items():
        array = exported[name]
        filler = np.full((1, *array.shape[1:]), fill, dtype=array.dtype)
        copies[name] = np.concatenate([array, filler])[rows]
    scratch = KeyStateStore(
        max_keys=max(len(keys), 1),
        hidden_size=store.hidden_size,
        window_steps=store.window_steps,
        input_size=store.input_size,
        device=store.device,
        trend_shape=store.trend_shape,
        initial_capacity=max(len(keys), 1),
    )
    scratch.import_(copies)
    return scratch
