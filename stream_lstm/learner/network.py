"""The recurrent network: one LSTM layer and a logistic output."""

from __future__ import annotations

from torch import nn


class LSTMNetwork(nn.Module):
    """The weights shared by every key: one LSTM layer and a linear head giving one logit per step.

    The learner drives the two parts itself (chunked, per-key states), so there is no ``forward``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)
