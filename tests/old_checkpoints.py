"""Checkpoints of the old pickle format, as the first versions of stream-lstm wrote them, for the
tests of their refusal and of their conversion (``stream-lstm convert-checkpoint``)."""

from __future__ import annotations

import copyreg
import io
import pickle
from pathlib import Path
from typing import Any

import torch

from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.learner.training import SKIP_REASONS
from stream_lstm.state.codec import MAGIC, PICKLE_SCHEMA

#: Hyperparameters that came after the old format.
_ADDED_SINCE_THE_OLD_FORMAT = (
    "steps_per_batch",
    "stream_rate_half_life",
    "lr_boost_half_life",
    "extra_step_events",
    "base_rate_odds",
)


def old_learner_state(learner: LSTMLearner) -> dict[str, Any]:
    """What ``LSTMLearner.__getstate__`` returned in the old format."""
    buffer = io.BytesIO()
    torch.save(
        {
            "network": learner.network.state_dict(),
            "optimizer": learner.optimizer.state_dict(),
            "keys": learner.keys.state_dict(),
            "last_loss": learner._last_loss,
            "last_grad_norm": learner._last_grad_norm,
        },
        buffer,
    )
    return {
        # The old format had no steps_per_batch (one step per batch), no stream rate, no early
        # boost, no early extra step and no average with the base rate.
        "hyperparameters": {
            k: v for k, v in learner.hyperparameters().items() if k not in _ADDED_SINCE_THE_OLD_FORMAT
        },
        "torch_state": buffer.getvalue(),
        "scaler": learner.scaler,
        "feature_columns": dict(learner.feature_columns),
        "features_dropped": learner.features_dropped,
        "events_seen": learner.events_seen,
        "events_learned": learner.events_learned,
        "steps": learner.steps,
        **dict(zip([f"skipped_{reason}" for reason in SKIP_REASONS], learner._skip_counts(), strict=True)),
        "narrow_inputs": learner._narrow_inputs,
    }


class _OldFormatPickler(pickle.Pickler):
    """Pickles learners as the old format did (their old state dict, under their class)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is LSTMLearner:
            return copyreg.__newobj__, (LSTMLearner,), old_learner_state(obj)
        return NotImplemented


def old_payload(state: Any, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    """The pickle of ``state`` that the old format held."""
    buffer = io.BytesIO()
    _OldFormatPickler(buffer, protocol=protocol).dump(state)
    return buffer.getvalue()


def old_checkpoint(payload: bytes) -> bytes:
    """``payload`` behind the old header: the magic line and format version 1."""
    return MAGIC + PICKLE_SCHEMA.to_bytes(2, "big") + payload


class TouchWhenUnpickled:
    """What an attacker would write: unpickling it calls ``Path.touch(marker)`` (a harmless
    stand-in for any code), so that a test can tell whether it was ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return Path.touch, (self.marker,)


def code_running_checkpoints(marker: Path) -> dict[str, bytes]:
    """Checkpoints whose loading by unpickling would create ``marker``: behind the old header,
    and raw. The test of each payload first checks that unpickling it does create the marker."""
    payload = pickle.dumps(TouchWhenUnpickled(marker), protocol=pickle.HIGHEST_PROTOCOL)
    return {"old header": old_checkpoint(payload), "raw pickle": payload}


def assert_payload_runs(marker: Path) -> None:
    """The payloads are live: plain unpickling does create the marker (then it is removed)."""
    pickle.loads(code_running_checkpoints(marker)["raw pickle"])
    assert marker.exists()
    marker.unlink()
