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


#: The longest half-life of the step size's early boost (``--lr-boost-half-life``), in optimizer
#: steps: far beyond any stream's length, so that a typo cannot hide as a boost that never ends.
MAX_LR_BOOST_HALF_LIFE = 1e9
#: The early boost's default half-life, in optimizer steps: chosen on the quality suite
#: (``benchmarks/bench_quality.py``), where 100 beat 200, 400 and none at batch 64.
DEFAULT_LR_BOOST_HALF_LIFE = 100.0


def check_lr_boost_half_life(value: Any) -> float:
    """``value`` as a float if it is 0 (no boost) or a number of steps from 1 to
    :data:`MAX_LR_BOOST_HALF_LIFE`, else :class:`~stream_lstm.errors.ConfigError`.

    Not less than 1: on a GPU the boost is worked out in float32, where a tiny half-life rounds to
    0 and the first step's size to 0/0; a boost that fades within one step is none anyway.
    """
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and (value == 0 or 1 <= value <= MAX_LR_BOOST_HALF_LIFE)):
        most = f"{MAX_LR_BOOST_HALF_LIFE:g}"
        raise ConfigError(
            f"lr_boost_half_life must be 0 (none) or a number of optimizer steps from 1 to {most},"
            f" got {value!r:.40}"
        )
    return float(value)


def check_steps_per_batch(value: Any) -> int:
    """``value`` if it is a whole number of steps from 1 to :data:`MAX_STEPS_PER_BATCH`, else
    :class:`~stream_lstm.errors.ConfigError` (a ``ValueError``, as a setting's parser raises)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STEPS_PER_BATCH:
        most = MAX_STEPS_PER_BATCH
        raise ConfigError(f"steps_per_batch must be an integer, at least 1 and at most {most}, got {value!r}")
    return value
