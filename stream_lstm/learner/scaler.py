"""Online standardisation of feature vectors with missing values."""

from __future__ import annotations

import numpy as np


class RunningScaler:
    """Standardises columns with running means and variances (Chan et al.'s parallel update).

    A missing value (NaN) is excluded from the statistics and scales to 0, i.e. it counts as the
    running mean. :meth:`transform` uses only statistics from earlier :meth:`update` calls, so a
    batch is never standardised with its own values.

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

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Standardise ``values`` (rows x columns, NaN for missing) with the current statistics."""
        scaled = (values - self.mean) * self._inverse_std
        scaled[np.isnan(scaled)] = 0.0
        return scaled

    def update(self, values: np.ndarray) -> None:
        """Fold the non-missing values of each column into its statistics."""
        if values.shape[0] == 1:
            self._update_one(values[0])
            return
        present = ~np.isnan(values)
        batch_count = present.sum(axis=0)
        if not batch_count.any():
            return
        filled = np.where(present, values, 0.0)
        safe_count = np.maximum(batch_count, 1)
        batch_mean = filled.sum(axis=0) / safe_count
        batch_m2 = (np.where(present, filled - batch_mean, 0.0) ** 2).sum(axis=0)
        total = self.count + batch_count
        safe_total = np.maximum(total, 1)
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * batch_count / safe_total
        self.m2 = self.m2 + batch_m2 + delta**2 * self.count * batch_count / safe_total
        self.count = total
        self._refresh_scale()

    def _update_one(self, row: np.ndarray) -> None:
        """:meth:`update` for one row (strict per-event learning): Welford's step, fewer array ops."""
        present = row == row  # not NaN
        total = self.count + present
        delta = np.where(present, row - self.mean, 0.0)
        self.mean = self.mean + delta / np.maximum(total, 1)
        self.m2 = self.m2 + np.where(present, delta * (row - self.mean), 0.0)
        self.count = total
        self._refresh_scale()

    def _refresh_scale(self) -> None:
        total = self.count
        variance = self.m2 / np.maximum(total, 1)
        # A column seen fewer than twice, or constant, is only centred: no division by ~0.
        usable = (total > 1) & (variance > 1e-16)
        self._inverse_std = np.where(usable, 1.0 / np.sqrt(np.where(usable, variance, 1.0)), 1.0)
