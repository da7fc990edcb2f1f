"""The batched, chunked forward pass equals a plain step-by-step LSTM over each key's history."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stream_lstm.events import Event
from stream_lstm.generator import temporal_stream
from stream_lstm.learner import LSTMLearner


def reference_probabilities(learner: LSTMLearner, events: list[Event]) -> np.ndarray:
    """Run each key's whole history one step at a time from a zero state with fixed weights.

    With frozen weights and an unscaled input, truncation changes nothing in the forward pass, so
    this is what every prediction must equal whatever the batch size and window length.
    """
    lstm, head = learner.network.lstm, learner.network.head
    columns: dict[str, int] = {}
    state: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    previous_label: dict[str, int] = {}
    previous_ts: dict[str, float] = {}
    out = []
    for event in events:
        x = torch.zeros(learner.input_size)
        for name, value in event.features.items():
            x[columns.setdefault(name, len(columns))] = value
        if event.ts is not None and event.key in previous_ts:
            x[learner.max_features] = math.log1p(max(event.ts - previous_ts[event.key], 0.0))
        if event.key in previous_label:
            x[learner.max_features + 1] = 2.0 * previous_label[event.key] - 1.0
        else:
            x[learner.max_features + 2] = 1.0
        h, c = state.get(event.key, (torch.zeros(1, 1, learner.hidden_size),) * 2)
        with torch.no_grad():
            output, (h, c) = lstm(x.view(1, 1, -1), (h, c))
            out.append(torch.sigmoid(head(output[0, 0])).item())
        state[event.key] = (h, c)
        if event.label is not None:
            previous_label[event.key] = event.label
        if event.ts is not None:
            previous_ts[event.key] = event.ts
    return np.array(out)


@pytest.mark.parametrize(
    ("batch_size", "tbptt_steps", "n_keys"),
    [(1, 1, 1), (1, 4, 3), (7, 3, 1), (32, 4, 5), (64, 8, 40), (200, 5, 2), (16, 1, 4)],
)
def test_chunked_forward_matches_step_by_step(batch_size: int, tbptt_steps: int, n_keys: int) -> None:
    events = list(temporal_stream(400, n_keys=n_keys, seed=11))
    learner = LSTMLearner(
        hidden_size=8, tbptt_steps=tbptt_steps, learning_rate=0.0, adapt_scaler=False, device="cpu"
    )
    expected = reference_probabilities(learner, events)
    got = []
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        got.append(learner.predict_proba_many(batch))
        learner.learn_many(batch)
    np.testing.assert_allclose(np.concatenate(got), expected, rtol=0, atol=1e-5)
