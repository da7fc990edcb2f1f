"""Bounds on the learner's hyperparameters that its settings, the learner and its checkpoint
reader share: one number each, so that no value one of them accepts is refused by another.

Torch-free, so that the command line's settings can import it without loading torch.
"""

from __future__ import annotations

from typing import Any

from stream_lstm.errors import ConfigError

#: The hyperparameters :meth:`~stream_lstm.learner.lstm_learner.LSTMLearner.change_settings`
#: changes on a learner that has learned, and so the settings a resumed checkpoint may change:
#: they change how it goes on learning, not what it has learned or the shape of its state.
CHANGEABLE_SETTINGS = (
    "learning_rate",
    "lr_boost_half_life",
    "clip_grad_norm",
    "steps_per_batch",
    "extra_step_events",
    "base_rate_odds",
    "device",
)

#: The largest ``--steps-per-batch`` (a batch early in a stream takes one more, see
#: ``--extra-step-events``): each step costs a forward and a backward pass, so far fewer are
#: useful; the bound keeps a typo from stalling the service.
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


#: The most labelled events that may get an extra optimizer step per batch
#: (``--extra-step-events``): far beyond any stream's start, so that a typo cannot hide as a
#: service that pays for an extra step on every batch forever.
MAX_EXTRA_STEP_EVENTS = 10**12
#: The default: a stream's first 5,000 labelled events get one optimizer step per batch more than
#: ``--steps-per-batch``. Chosen on the quality suite (``benchmarks/bench_quality.py``), where
#: 5,000 beat 3,000, 8,000, none, and a third step on every batch. Tuned at batch 64.
DEFAULT_EXTRA_STEP_EVENTS = 5000


def check_extra_step_events(value: Any) -> int:
    """``value`` if it is a whole number of events from 0 (none) to
    :data:`MAX_EXTRA_STEP_EVENTS`, else :class:`~stream_lstm.errors.ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EXTRA_STEP_EVENTS:
        most = f"{MAX_EXTRA_STEP_EVENTS:,}"
        raise ConfigError(f"extra_step_events must be an integer from 0 (none) to {most}, got {value!r:.40}")
    return value


#: The largest ``--base-rate-odds``, in nats: odds of e^1000 to 1 keep the network's probabilities
#: as they are on any stream that could ever be seen; the bound keeps a typo from hiding.
MAX_BASE_RATE_ODDS = 1000.0
#: The default prior log-odds of the network against the base rate
#: (:mod:`stream_lstm.learner.base_rate`). Chosen on the quality suite: at 10 nats every stream
#: with signal keeps the network's log loss at batch 64 (to 4 decimals), and the stream without
#: signal comes within 0.0005 of the log loss of the rate so far (5 nats: 0.0002 lost on a
#: seasonal stream; 20: 0.0004-0.0005 further from the rate where there is no signal).
DEFAULT_BASE_RATE_ODDS = 10.0


def check_base_rate_odds(value: Any) -> float:
    """``value`` as a float if it is a number of nats from 0 (off) to :data:`MAX_BASE_RATE_ODDS`,
    else :class:`~stream_lstm.errors.ConfigError`."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and 0 <= value <= MAX_BASE_RATE_ODDS):
        most = f"{MAX_BASE_RATE_ODDS:g}"
        raise ConfigError(
            f"base_rate_odds must be a number of nats from 0 (off) to {most}, got {value!r:.40}"
        )
    return float(value)


def check_steps_per_batch(value: Any) -> int:
    """``value`` if it is a whole number of steps from 1 to :data:`MAX_STEPS_PER_BATCH`, else
    :class:`~stream_lstm.errors.ConfigError` (a ``ValueError``, as a setting's parser raises)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STEPS_PER_BATCH:
        most = MAX_STEPS_PER_BATCH
        raise ConfigError(f"steps_per_batch must be an integer, at least 1 and at most {most}, got {value!r}")
    return value
