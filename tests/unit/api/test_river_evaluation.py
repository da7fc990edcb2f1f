"""The classifier in river's own evaluation and pipelines, on a data set that ships with river."""

from __future__ import annotations

from collections import Counter

import pytest
from river import compose, datasets, evaluate, metrics, preprocessing

from stream_lstm import LSTMClassifier

ROWS = 600


def majority_rate() -> float:
    """Accuracy of always predicting the commonest label of the same rows."""
    counts = Counter(y for _, y in datasets.Phishing().take(ROWS))
    return max(counts.values()) / sum(counts.values())


@pytest.mark.slow
def test_progressive_val_score_beats_the_majority_class() -> None:
    model = LSTMClassifier(hidden_size=16, tbptt_steps=4, device="cpu")
    accuracy = evaluate.progressive_val_score(datasets.Phishing().take(ROWS), model, metrics.Accuracy())
    assert accuracy.get() > majority_rate() + 0.1, (accuracy, majority_rate())
    assert model.events_learned == ROWS


@pytest.mark.slow
def test_in_a_pipeline_after_a_scaler_and_a_selection() -> None:
    features = ["empty_server_form_handler", "popup_window", "https", "request_from_other_domain"]
    pipeline = (
        compose.Select(*features)
        | preprocessing.StandardScaler()
        | LSTMClassifier(hidden_size=16, tbptt_steps=4, device="cpu")
    )
    log_loss = evaluate.progressive_val_score(datasets.Phishing().take(ROWS), pipeline, metrics.LogLoss())
    accuracy = evaluate.progressive_val_score(
        datasets.Phishing().take(ROWS), pipeline.clone(), metrics.Accuracy()
    )
    assert accuracy.get() > majority_rate(), accuracy
    assert log_loss.get() < 0.69, log_loss  # better than the 0.693 of a constant 1/2
    assert set(pipeline["LSTMClassifier"].feature_columns) == set(features)
