"""Online standardisation of feature vectors with missing values."""

from __future__ import annotations

from typing import Any

import numpy as np

# The largest magnitude the statistics are sized for: the decoder's bound on accepted values.
# Values past it (none is accepted) are left out of the statistics, like missing ones, so that
# they cannot overflow them.
from stream_lstm.messages.events import MAX_ABS_VALUE
from stream_lstm.models.state_data import Fields, State, damaged


class RunningScaler:
    """Standardises columns with running means and variances (Chan et al.'s parallel update).

    A missing value (NaN) is excluded from the statistics and scales to 0, i.e. it counts as the
    running mean. A value past ``MAX_ABS_VALUE`` (infinite ones included; no accepted event holds
    one) is excluded from the statistics too, but standardised like any other. :meth:`transform`
    uses only statistics from earlier :meth:`update` calls, so a batch is never standardised with
    its own values, and can clip what it returns to a range.

    Precision: float64 throughout. Accepted values are finite with ``|x| <= 1e18`` (the
    decoder's bound, ``MAX_ABS_VALUE``), and the log time gap is below 43, so every deviation from
    a mean is at most 2e18 and every term of ``m2`` at most 4e36 times a count; ``m2`` stays
    finite for any count below about 1e270, and a standardised value is at most 2e26 (the inverse
    standard deviation is at most 1e8, see :meth:`_refresh_scale`) before clipping.

    Parameters
    ----------
    n_columns
        Number of columns.

    Examples
    --------
    >>> scaler = RunningScaler(1)
    >>> scaler.update(np.array([[1.0], [3.0]]))
    >>> scaler.transform(np.array([[2.0], [np.nan], [4.0]])).ravel().tolist()
    [0.0, 0.0, 2.0]
    """

    def __init__(self, n_columns: int) -> None:
        self.n_columns = n_columns
        self.count = np.zeros(n_columns)
        self.mean = np.zeros(n_columns)
        self.m2 = np.zeros(n_columns)
        self._inverse_std = np.ones(n_columns)

    def transform(
        self, values: np.ndarray, columns: np.ndarray | None = None, *, clip: float | None = None
    ) -> np.ndarray:
        """Standardise ``values`` (rows x columns, NaN for missing) with the current statistics.

        ``columns``: the scaler's columns that ``values`` holds, when it holds only some (the
        others would be all missing: skipping them saves most of the work on wide, sparse rows).
        ``clip``: the result is clipped to ``[-clip, clip]``.

        >>> scaler = RunningScaler(1)
        >>> scaler.update(np.array([[1.0], [3.0]]))
        >>> scaler.transform(np.array([[1e18], [-5.0]]), clip=10.0).ravel().tolist()
        [10.0, -7.0]
        """
        if columns is None:
            scaled = (values - self.mean) * self._inverse_std
        else:
            scaled = (values - self.mean[columns]) * self._inverse_std[columns]
        scaled[np.isnan(scaled)] = 0.0
        if clip is not None:  # after the NaNs are gone: with a NaN in it, each call costs twice as much
            np.minimum(scaled, clip, out=scaled)
            np.maximum(scaled, -clip, out=scaled)
        return scaled

    def update(self, values: np.ndarray, columns: np.ndarray | None = None) -> None:
        """Fold the non-missing values of each column into its statistics (``columns`` as in
        :meth:`transform`)."""
        at = slice(None) if columns is None else columns
        if values.shape[0] == 1:
            self._update_one(values[0], at)
            return
        present = np.abs(values) <= MAX_ABS_VALUE  # neither missing (NaN) nor out of range
        batch_count = present.sum(axis=0)
        if not batch_count.any():
            return
        filled = np.where(present, values, 0.0)
        safe_count = np.maximum(batch_count, 1)
        batch_mean = filled.sum(axis=0) / safe_count
        batch_m2 = (np.where(present, filled - batch_mean, 0.0) ** 2).sum(axis=0)
        count, mean = self.count[at], self.mean[at]
        total = count + batch_count
        safe_total = np.maximum(total, 1)
        delta = batch_mean - mean
        self._store(
            at,
            total,
            mean + delta * batch_count / safe_total,
            self.m2[at] + batch_m2 + delta**2 * count * batch_count / safe_total,
        )

    def _update_one(self, row: np.ndarray, at: slice | np.ndarray) -> None:
        """:meth:`update` for one row (strict per-event learning): Welford's step, fewer array ops."""
        present = np.abs(row) <= MAX_ABS_VALUE  # neither missing (NaN) nor out of range
        total = self.count[at] + present
        delta = np.where(present, row - self.mean[at], 0.0)
        mean = self.mean[at] + delta / np.maximum(total, 1)
        self._store(at, total, mean, self.m2[at] + delta * np.where(present, row - mean, 0.0))

    def _store(self, at: slice | np.ndarray, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        # New arrays rather than writes into the old ones, which a copy of the scaler may share.
        self.count, self.mean, self.m2 = self.count.copy(), self.mean.copy(), self.m2.copy()
        self.count[at], self.mean[at], self.m2[at] = count, mean, m2
        self._refresh_scale()

    def _refresh_scale(self) -> None:
        total = self.count
        variance = self.m2 / np.maximum(total, 1)
        # A column seen fewer than twice, or constant, is only centred: no division by ~0.
        usable = (total > 1) & (variance > 1e-16)
        self._inverse_std = np.where(usable, 1.0 / np.sqrt(np.where(usable, variance, 1.0)), 1.0)

    def to_state(self) -> State:
        """The statistics as data: per column, the count, mean and sum of squared deviations."""
        return {"count": self.count.copy(), "mean": self.mean.copy(), "m2": self.m2.copy()}

    @classmethod
    def from_state(cls, tree: Any, where: str, n_columns: int) -> RunningScaler:
        """The scaler of a :meth:`to_state` with ``n_columns`` columns
        (:class:`~stream_lstm.errors.CheckpointRejected` if ``tree`` is not one)."""
        fields = Fields(tree, where, ("count", "mean", "m2"))
        scaler = cls(0)
        scaler.n_columns = n_columns
        scaler.count = fields.array("count", "float64", (n_columns,)).copy()
        scaler.mean = fields.array("mean", "float64", (n_columns,)).copy()
        scaler.m2 = fields.array("m2", "float64", (n_columns,)).copy()
        if (scaler.count < 0).any() or (scaler.m2 < 0).any():
            raise damaged(where, "a count or a sum of squares is negative")
        scaler._refresh_scale()
        return scaler
