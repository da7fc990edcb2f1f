"""The recurrent network: one LSTM layer and a logistic output."""

from __future__ import annotations

import torch
from torch import nn


class LSTMNetwork(nn.Module):
    """Maps input sequences to one logit per step; the weights are shared by every key."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - not used
        outputs, _ = self.lstm(inputs)
        return self.head(outputs).squeeze(-1)
