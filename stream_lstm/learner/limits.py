"""Bounds on the learner's hyperparameters that its settings, the learner and its checkpoint
reader share: one number each, so that no value one of them accepts is refused by another.

Torch-free, so that the command line's settings can import it without loading torch.
"""

from __future__ import annotations

from typing import Any

from stream_lstm.errors import ConfigError

#: The most optimizer steps on one micro-batch (``--steps-per-batch``): each costs a forward and
#: a backward pass, so far fewer are useful; the bound keeps a typo from stalling the service.
MAX_STEPS_PER_BATCH = 1000


def check_steps_per_batch(value: Any) -> int:
    """``value`` if it is a whole number of steps from 1 to :data:`MAX_STEPS_PER_BATCH`, else
    :class:`~stream_lstm.errors.ConfigError` (a ``ValueError``, as a setting's parser raises)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STEPS_PER_BATCH:
        most = MAX_STEPS_PER_BATCH
        raise ConfigError(f"steps_per_batch must be an integer, at least 1 and at most {most}, got {value!r}")
    return value
