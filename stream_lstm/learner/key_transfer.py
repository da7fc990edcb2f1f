"""Key states moving between learners: export, import, forget, and detach while a partition is away."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch

from stream_lstm.errors import ConfigError
from stream_lstm.learner.encoding import EXTRA_INPUTS
from stream_lstm.learner.key_state import KeyStateStore
from stream_lstm.learner.pending import Pending


class KeyTransfer:
    """The learner's per-key state as a whole (a base of the LSTM learner,
    :class:`~stream_lstm.learner.lstm_learner.LSTMLearner`).

    Stored windows are input vectors, so key states travel with the feature layout they were
    written in (``feature_columns``), and an import must agree with the importer's layout. None
    of it may run between a batch's prediction and its learning (``_pending``).
    """

    max_keys: int
    hidden_size: int
    tbptt_steps: int
    input_size: int
    max_features: int
    category_buckets: int
    trend_scales: int
    input_clip: float
    feature_columns: dict[str, int]
    keys: KeyStateStore
    _device: torch.device
    _pending: Pending | None
    _narrow_inputs: bool
    _category_inputs_used: bool

    def _new_key_store(self) -> KeyStateStore:
        """An empty store for this learner's keys."""
        return KeyStateStore(
            max_keys=self.max_keys,
            hidden_size=self.hidden_size,
            window_steps=max(self.tbptt_steps - 1, 1),
            input_size=self.input_size,
            device=self._device,
            trend_shape=(self.trend_scales, self.max_features),
        )

    def tracked_keys(self) -> Collection[str]:
        """The keys that hold a state now."""
        return self.keys.tracked()

    def key_stats(self) -> dict[str, int]:
        """How many keys hold a state now, and how many were evicted so far (LRU)."""
        return {"tracked": len(self.keys), "evicted": self.keys.evictions}

    def export_keys(self, keys: Sequence[str]) -> dict[str, Any]:
        """The recurrent state and window of those of ``keys`` that are tracked (CPU tensors).

        With :meth:`import_keys` this moves keys between learners (a Kafka partition changing
        owner): the receiver continues them exactly where this learner left them.
        """
        self._check_no_pending()
        return {**self.keys.export(keys), "feature_columns": dict(self.feature_columns)}

    def import_keys(self, state: dict[str, Any]) -> None:
        """Continue the keys of an :meth:`export_keys`, replacing their current state.

        The stored windows are input vectors in the exporter's feature layout: features this
        learner has not met yet take the exporter's columns; a feature that sits in different
        columns in the two learners makes the windows unreadable (:class:`ConfigError`). States
        without their layout (older versions) whose windows hold values in columns this learner
        has no name for make it run the LSTM on every input column from then on. The category
        buckets are the same columns in every learner with the same ``category_buckets``.
        """
        self._check_no_pending()
        theirs: dict[str, int] = state.get("feature_columns", {})
        outside = [name for name, column in theirs.items() if not 0 <= column < self.max_features]
        if outside:
            raise ConfigError(
                f"key states were saved with features {sorted(outside)[:5]} in columns past this "
                f"learner's {self.max_features} feature inputs; they cannot be continued by this learner"
            )
        taken = {column: name for name, column in self.feature_columns.items()}
        clashes = [
            name
            for name, column in theirs.items()
            if self.feature_columns.get(name, column) != column
            or (name not in self.feature_columns and taken.get(column, name) != name)
        ]
        if clashes:
            raise ConfigError(
                f"key states were saved with another feature layout (features {sorted(clashes)[:5]} "
                "sit in other input columns); they cannot be continued by this learner"
            )
        if "trend" in state:  # averages of clipped inputs: bounded as this learner's are
            state = {**state, "trend": np.clip(state["trend"], -self.input_clip, self.input_clip)}
        self.keys.import_(state)
        for name, column in theirs.items():
            self.feature_columns.setdefault(name, column)
        if state["keys"]:
            windows = torch.as_tensor(state["window"])
            if self._windows_use_unnamed_columns(windows):
                self._narrow_inputs = False  # see _input_columns
            if self._windows_use_category_buckets(windows):
                self._category_inputs_used = True  # see _input_columns

    def _windows_use_unnamed_columns(self, windows: torch.Tensor) -> bool:
        """Whether stored input ``windows`` hold a value in a feature column without a name (key
        states of a version that did not record its layout)."""
        unnamed = torch.ones(self.max_features, dtype=torch.bool)
        unnamed[[c for c in self.feature_columns.values() if 0 <= c < self.max_features]] = False
        used = torch.zeros(self.max_features, dtype=torch.bool)
        for start in range(0, windows.shape[0], 65_536):  # bounded temporaries on large stores
            rows = windows[start : start + 65_536, :, : self.max_features]
            used |= rows.ne(0).any(dim=0).any(dim=0).cpu()
        return bool((used & unnamed).any())

    def _windows_use_category_buckets(self, windows: torch.Tensor) -> bool:
        """Whether stored input ``windows`` hold a value in a category bucket column."""
        first = self.max_features + EXTRA_INPUTS
        if not self.category_buckets or windows.shape[2] <= first:
            return False
        last = first + self.category_buckets
        return any(
            bool(windows[start : start + 65_536, :, first:last].ne(0).any())  # bounded temporaries
            for start in range(0, windows.shape[0], 65_536)
        )

    def forget_keys(self, keys: Sequence[str]) -> None:
        """Drop the state of ``keys``: they restart from a zero state if they come back."""
        self._check_no_pending()
        self.keys.forget(keys)

    def detach_keys(self) -> KeyStateStore:
        """Take out every key's state, leaving none tracked; :meth:`attach_keys` puts it back.

        Lets the weights be saved without the key states, which are saved per partition.
        """
        self._check_no_pending()
        store, self.keys = self.keys, self._new_key_store()
        return store

    def attach_keys(self, store: KeyStateStore) -> None:
        """Put back what :meth:`detach_keys` took out."""
        self.keys = store

    def _check_no_pending(self) -> None:
        if self._pending is not None:
            raise RuntimeError("key states cannot change between predict_batch and learn_batch")
