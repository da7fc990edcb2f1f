"""Trend inputs: how far each feature is from the key's own recent average of it, at a few scales.

Why: many streams' labels compare a value with its recent level (Elec2's label is "the price is
above its 24-hour average"). An LSTM can learn a moving average only through its cell state, and
truncated backpropagation through ``tbptt_steps`` steps gives it no gradient for averages over
more steps than that. A few exponential moving averages per key are a fixed linear recurrence that
needs no learning (as the fixed memory of a Legendre Memory Unit, Voelker et al. 2019); the LSTM
and ``logreg_lags`` (which gets the same inputs) learn what to make of them.

For scale ``s`` (half-life ``4 ** (s + 1)`` events of the key,
:mod:`stream_lstm.messages.trend_scales`) and each feature, the input of an
event is its standardised value minus the key's exponential moving average of that feature's
earlier standardised values (clipped like every input), and the average then moves towards the
value. An average starts at 0 (the feature's running mean); a missing value leaves it as it is
and has the input 0. Everything here is on the host, in NumPy, and uses only the key's earlier
events: the prequential rule holds.
"""

from __future__ import annotations

import functools

import numpy as np

from stream_lstm.learner.batch_columns import KeyGroups

#: Ranks of a key's events handled by one matrix product (bounds its temporaries).
_BLOCK = 64


def trend_deviations(
    values: np.ndarray, present: np.ndarray, groups: KeyGroups, start: np.ndarray, rates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each event's deviations from its key's averages before it, and the averages after the batch.

    ``values`` (events × features) are standardised features, ``present`` where they are not
    missing; ``start`` (keys × scales × features, the keys of ``groups``) the averages before the
    batch; ``rates`` each scale's step. Returns ``(deviations, end)``: events × scales × features,
    and keys × scales × features.

    >>> from stream_lstm.learner.batch_columns import group_by_slot
    >>> g = group_by_slot(np.array([0, 0, 0]))
    >>> x = np.array([[1.0], [1.0], [3.0]])
    >>> dev, end = trend_deviations(x, np.ones_like(x, bool), g, np.zeros((1, 1, 1)), np.array([0.5]))
    >>> dev[:, 0, 0].tolist(), end.ravel().tolist()
    ([1.0, 0.5, 2.25], [1.875])
    """
    n_events = values.shape[0]
    end = start.astype(np.float64, copy=True)
    deviations = np.zeros((n_events, rates.size, values.shape[1]))
    if not rates.size or not n_events:
        return deviations, end
    rate = rates[None, :, None]
    # A value beyond float32 with an input clip too wide to bound it arrives as an infinity:
    # missing, so that no average turns non-finite.
    present = present & np.isfinite(values)
    values = np.where(present, values, 0.0)
    if groups.counts.size == n_events:  # every key once: one step for all of them
        gap = (values[:, None, :] - end) * present[:, None, :]
        end += rate * gap
        return gap, end
    order, starts, counts = groups.order, groups.starts, groups.counts
    for first in range(0, int(counts.max()), _BLOCK):
        keys = np.flatnonzero(counts > first)
        steps = np.minimum(counts[keys] - first, _BLOCK)
        events = _block_events(order, starts[keys] + first, steps)
        taken = events >= 0
        at = np.maximum(events, 0)
        block_present = present[at] & taken[:, :, None]
        block_values = values[at] * block_present
        if block_present[taken].all():
            gaps, end[keys] = _block_all_present(block_values, end[keys], steps, rates)
        else:
            gaps, end[keys] = _block_stepwise(block_values, block_present, end[keys], rate)
        deviations[events[taken]] = gaps[taken]
    return deviations, end


def _block_events(order: np.ndarray, first: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """keys × ranks: the event at each rank of the block (-1 past a key's last event)."""
    ranks = np.arange(int(steps.max()))
    where = first[:, None] + ranks[None, :]
    return np.where(ranks[None, :] < steps[:, None], order[np.minimum(where, order.size - 1)], -1)


def _block_all_present(
    values: np.ndarray, start: np.ndarray, steps: np.ndarray, rates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A block without missing values in closed form: the average before rank ``t`` is
    ``(1 - a)^t start + sum over q < t of a (1 - a)^(t - 1 - q) x_q``, one matrix product."""
    length = values.shape[1]
    weights, decay = _closed_form(length, tuple(rates.tolist()))
    before = np.matmul(weights[None], values[:, None]) + start[:, :, None, :] * decay  # keys × scales × t × f
    gaps = values[:, None, :, :] - before[:, :, :length, :]  # keys × scales × ranks × features
    end = before[np.arange(values.shape[0]), :, steps, :]
    return gaps.transpose(0, 2, 1, 3), end


@functools.lru_cache(maxsize=64)
def _closed_form(length: int, rates: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The weights of the closed form for ``length`` ranks (scales × ranks + 1 × ranks) and the
    decay of the start (1 × scales × ranks + 1 × 1); cached, as most blocks have the same length."""
    step = np.asarray(rates)[:, None, None]
    keep = 1.0 - step  # scales × 1 × 1
    t = np.arange(length + 1)[:, None]
    q = np.arange(length)[None, :]
    weights = np.where(q < t, step * keep ** np.maximum(t - 1 - q, 0), 0.0)
    decay = (keep ** t[None])[:, :, :, None].reshape(1, len(rates), length + 1, 1)
    return weights, decay


def _block_stepwise(
    values: np.ndarray, present: np.ndarray, start: np.ndarray, rate: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A block with missing values, a rank at a time (a missing value moves no average)."""
    average = start.copy()
    gaps = np.zeros((values.shape[0], values.shape[1], *start.shape[1:]))
    for rank in range(values.shape[1]):
        gap = (values[:, rank, None, :] - average) * present[:, rank, None, :]
        gaps[:, rank] = gap
        average += rate * gap
    return gaps, average
