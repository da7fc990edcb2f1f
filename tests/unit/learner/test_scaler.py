"""The running feature scaler: statistics, and updates restricted to the columns in use."""

from __future__ import annotations

import numpy as np

from stream_lstm.learner.scaler import RunningScaler


def sparse_rows(rng: np.random.Generator, n_rows: int, n_columns: int, used: np.ndarray) -> np.ndarray:
    """Rows where only ``used`` columns hold values, some of them missing."""
    values = np.full((n_rows, n_columns), np.nan)
    values[:, used] = rng.normal(3.0, 2.0, size=(n_rows, used.size))
    values[rng.random(values.shape) < 0.2] = np.nan
    return values


def test_statistics_are_the_mean_and_variance_of_the_values_seen() -> None:
    rng = np.random.default_rng(1)
    scaler = RunningScaler(3)
    seen = []
    for n_rows in (1, 5, 1, 40, 7):
        batch = sparse_rows(rng, n_rows, 3, np.array([0, 2]))
        scaler.update(batch)
        seen.append(batch)
    everything = np.concatenate(seen)
    np.testing.assert_allclose(scaler.mean[[0, 2]], np.nanmean(everything[:, [0, 2]], axis=0))
    np.testing.assert_allclose(
        scaler.m2[[0, 2]] / scaler.count[[0, 2]], np.nanvar(everything[:, [0, 2]], axis=0)
    )
    assert scaler.count[1] == 0 and scaler.mean[1] == 0


def test_updating_and_scaling_only_the_columns_in_use_gives_the_same_statistics() -> None:
    rng = np.random.default_rng(2)
    whole, part = RunningScaler(8), RunningScaler(8)
    used = np.array([1, 4, 7])
    for n_rows in (3, 1, 64, 1, 1, 200, 2):
        batch = sparse_rows(rng, n_rows, 8, used)
        full = whole.transform(batch)
        np.testing.assert_allclose(part.transform(batch[:, used], used), full[:, used], rtol=1e-12)
        assert not full[:, np.setdiff1d(np.arange(8), used)].any()
        whole.update(batch)
        part.update(batch[:, used], used)
        for name in ("count", "mean", "m2", "_inverse_std"):
            # NumPy may sum a column in another order when the matrix is narrower: the last bit.
            np.testing.assert_allclose(getattr(part, name), getattr(whole, name), rtol=1e-12)
