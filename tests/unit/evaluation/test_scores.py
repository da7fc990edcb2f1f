"""Prequential scores: each metric against a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_lstm.evaluation.scores import Scorer, average_ranks, kappa_temporal, log_loss_terms, roc_auc


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200), 1)  # many ties
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores))
    assert math.isnan(roc_auc(np.ones(5, dtype=int), scores[:5]))
    assert math.isnan(
        roc_auc(np.array([1, 0, 1, 0]), np.array([0.2, np.nan, 0.1, np.nan]))
    )  # as scipy's ranks


def test_average_ranks_equal_scipy_rankdata() -> None:
    """The ranks behind the AUC, ties averaged, as scipy computes them (scipy comes with river)."""
    rankdata = pytest.importorskip("scipy.stats").rankdata
    rng = np.random.default_rng(2)
    for size in (0, 1, 2, 7, 1000):
        ties = rng.integers(0, 4, size).astype(float)
        for values in (rng.random(size), ties, np.round(rng.random(size), 1)):
            np.testing.assert_array_equal(average_ranks(values), rankdata(values))


def test_whole_stream_scores() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 5000).astype(np.int8)
    probabilities = np.clip(labels * 0.3 + rng.random(5000) * 0.7, 0, 1)
    reference = rng.random(5000) < 0.6
    scorer = Scorer(window=100)
    for start in range(0, 5000, 333):  # uneven batches
        part = slice(start, start + 333)
        scorer.update(labels[part], probabilities[part], reference[part])
    whole = scorer.whole()
    accuracy = float(((probabilities >= 0.5) == (labels == 1)).mean())
    assert whole["accuracy"] == pytest.approx(accuracy)
    assert whole["log_loss"] == pytest.approx(log_loss_terms(labels, probabilities).mean())
    assert whole["roc_auc"] == pytest.approx(brute_force_auc(labels[:800], probabilities[:800]), abs=0.05)
    assert whole["roc_auc"] == pytest.approx(roc_auc(labels, probabilities), abs=1e-3)  # binned
    assert whole["kappa_temporal"] == pytest.approx((accuracy - reference.mean()) / (1 - reference.mean()))


def test_rolling_scores_cover_only_the_last_window() -> None:
    scorer = Scorer(window=10)
    scorer.update(np.zeros(95, dtype=np.int8), np.full(95, 0.9), np.zeros(95, dtype=bool))  # all wrong
    scorer.update(np.ones(10, dtype=np.int8), np.full(10, 0.8), np.ones(10, dtype=bool))  # all right
    assert scorer.rolling()["accuracy"] == 1.0
    assert scorer.rolling()["log_loss"] == pytest.approx(-math.log(0.8))
    assert scorer.whole()["accuracy"] == pytest.approx(10 / 105)
    scorer.update(np.zeros(25, dtype=np.int8), np.full(25, 0.2), np.ones(25, dtype=bool))  # > window
    assert scorer.rolling()["accuracy"] == 1.0 and scorer.rolling()["log_loss"] == pytest.approx(
        -math.log(0.8)
    )


def test_log_loss_of_a_confident_miss_is_finite() -> None:
    assert log_loss_terms(np.array([1]), np.array([0.0]))[0] == pytest.approx(-math.log(1e-15))


def test_kappa_temporal() -> None:
    assert kappa_temporal(0.9, 0.8) == pytest.approx(0.5)
    assert kappa_temporal(0.7, 0.8) == pytest.approx(-0.5)
    assert math.isnan(kappa_temporal(1.0, 1.0))


def test_empty_scorer_reports_nan() -> None:
    scorer = Scorer()
    assert all(math.isnan(v) for v in scorer.whole().values())
    assert all(math.isnan(v) for v in scorer.rolling().values())


def test_one_event_at_a_time_scores_the_same_as_batches() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 700).astype(np.int8)
    probabilities = rng.random(700)
    reference = rng.random(700) < 0.6
    single, batched = Scorer(window=50), Scorer(window=50)
    for i in range(700):
        single.update(labels[i : i + 1], probabilities[i : i + 1], reference[i : i + 1])
    for i in range(0, 700, 9):
        batched.update(labels[i : i + 9], probabilities[i : i + 9], reference[i : i + 9])
    for scope in ("whole", "rolling"):
        got, expected = getattr(single, scope)(), getattr(batched, scope)()
        assert got == pytest.approx(expected, rel=1e-12), scope
    np.testing.assert_array_equal(single.positive_bins, batched.positive_bins)
