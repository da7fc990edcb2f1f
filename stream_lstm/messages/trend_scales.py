"""The scales of the trend inputs, shared by the LSTM and ``logreg_lags`` (which must get the same).

Scale ``s`` (from 0) averages a key's values with a half-life of ``TREND_BASE ** (s + 1)`` of its
events: 4, 16, 64, ... How the LSTM builds the inputs is :mod:`stream_lstm.learner.trend`. Here,
without torch or river, because the settings, the learner, the baseline and the checkpoint readers
all read the bound.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stream_lstm.errors import ConfigError

#: Scale ``s`` has a half-life of ``TREND_BASE ** (s + 1)`` events.
TREND_BASE = 4

#: The trend scales of the LSTM and ``logreg_lags`` unless told otherwise: the cheapest number
#: within 0.005 of the best mean log loss on the quality suite (docs/evaluation.md).
DEFAULT_TREND_SCALES = 4

#: The most trend scales (``--trend-scales``): half-lives of 4, 16, 64, 256 and 1,024 events.
MAX_TREND_SCALES = 5


def check_trend_scales(value: Any) -> int:
    """``value`` if it is a whole number of trend scales from 0 to :data:`MAX_TREND_SCALES`, else
    :class:`~stream_lstm.errors.ConfigError` (a ``ValueError``, as a setting's parser raises)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TREND_SCALES:
        raise ConfigError(
            f"trend_scales must be an integer, at least 0 and at most {MAX_TREND_SCALES}, got {value!r}"
        )
    return value


def trend_half_lives(scales: int) -> list[int]:
    """The half-lives, in events of the key, of ``scales`` trend scales.

    >>> trend_half_lives(3)
    [4, 16, 64]
    """
    return [TREND_BASE ** (s + 1) for s in range(scales)]


def trend_rates(scales: int) -> np.ndarray:
    """Each scale's step towards a new value: ``1 - 0.5 ** (1 / half_life)``."""
    return 1.0 - 0.5 ** (1.0 / np.asarray(trend_half_lives(scales), dtype=np.float64))
