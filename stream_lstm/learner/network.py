"""The recurrent network: one LSTM layer and a logistic output."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class LSTMNetwork(nn.Module):
    """The weights shared by every key: one LSTM layer and a linear head giving one logit per step.

    The learner drives the two parts itself (chunked, per-key states), so there is no ``forward``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)


def seeded_network(
    input_size: int, hidden_size: int, seed: int, *, later_inputs: Sequence[int] = ()
) -> LSTMNetwork:
    """A network with the initial weights of ``seed`` (torch's own generator is left as it was).

    The weights are drawn as torch draws them for the first ``input_size - sum(later_inputs)``
    inputs, then the input weights of each group of ``later_inputs`` columns in turn (from the
    same uniform distribution that torch uses): so no weight depends on a later group's size. A
    learner's category buckets are such a group, and they are 0 in a stream without categories:
    there the learner is the one it would be without buckets, prediction for prediction; its
    trend inputs are the group after them.
    """
    extra = sum(later_inputs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = LSTMNetwork(input_size - extra, hidden_size)
        if not extra:
            return network
        bound = 1 / math.sqrt(hidden_size)
        later = torch.cat(
            [torch.empty(4 * hidden_size, size).uniform_(-bound, bound) for size in later_inputs], dim=1
        )
        wider = LSTMNetwork(input_size, hidden_size)
    weights = network.state_dict()
    weights["lstm.weight_ih_l0"] = torch.cat([weights["lstm.weight_ih_l0"], later], dim=1)
    wider.load_state_dict(weights)
    return wider
