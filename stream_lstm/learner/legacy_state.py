"""The LSTM learner of a checkpoint of the old pickle format, for its one-time conversion.

The old format pickled the learner as a dict whose ``torch_state`` was a ``torch.save`` of its
weights, optimizer and key store, read back with ``torch.load(weights_only=False)``: code of the
writer's choosing. Only :mod:`stream_lstm.state.legacy_pickle`, which the explicit
``stream-lstm convert-checkpoint --trust-pickle`` runs, calls :func:`learner_from_pickled_state`;
no checkpoint load path does.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from stream_lstm.learner.learner_state import ADDED_LATER_DEFAULTS
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.learner.training import SKIP_REASONS


def learner_from_pickled_state(state: dict[str, Any]) -> LSTMLearner:
    """The learner of the dict the old format pickled (``LSTMLearner.__getstate__`` before format
    2), with the defaults of fields that older versions did not write. Trusted input only."""
    learner = LSTMLearner.__new__(LSTMLearner)
    # The old format predates input_clip and every hyperparameter added since.
    defaults = {"input_clip": 10.0, **ADDED_LATER_DEFAULTS}
    for name, value in {**defaults, **state["hyperparameters"]}.items():
        setattr(learner, name, value)
    learner._build()
    # Trusted: the caller vouched for this checkpoint (--trust-pickle); nothing else gets here.
    saved = torch.load(io.BytesIO(state["torch_state"]), map_location=learner._device, weights_only=False)
    learner.network.load_state_dict(saved["network"])
    learner.optimizer.load_state_dict(saved["optimizer"])
    learner.keys.load_state_dict(saved["keys"])
    learner._last_loss = saved["last_loss"]
    learner._last_grad_norm = saved["last_grad_norm"]
    learner.scaler = state["scaler"]
    learner.feature_columns = dict(state["feature_columns"])
    # Older checkpoints kept the dropped names ("dropped_features"), not a count of values.
    learner.features_dropped = state.get("features_dropped", 0)
    learner.events_seen = state["events_seen"]
    learner.events_learned = state["events_learned"]
    learner._skipped = [state.get(f"skipped_{reason}", 0) for reason in SKIP_REASONS]
    learner._steps_tried = state["steps"] + sum(learner._skipped)
    # Absent in older checkpoints, whose key states may have come without their layout.
    narrow = state.get("narrow_inputs")
    if narrow is None:
        narrow = not learner._windows_use_unnamed_columns(learner.keys.window)
    learner._narrow_inputs = narrow
    return learner
