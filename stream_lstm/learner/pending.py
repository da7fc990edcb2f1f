"""A micro-batch's forward pass as the learner keeps it until it learns the batch: the encoded
inputs, the logits and their probabilities on the host, the keys' next states, and how to run its
chunks again for another optimizer step.

Data of its own, apart from :mod:`stream_lstm.learner.forward` which makes it: the training
(:mod:`stream_lstm.learner.training`) and the key transfer (:mod:`stream_lstm.learner.key_transfer`)
read it too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stream_lstm.learner.batch_columns import KeyGroups
from stream_lstm.messages.events import Event

#: Where each event's output is in the outputs of a run over chunk rows: the step of every row's
#: one event (an int), each event's flat index into the rows' steps (a tensor), or ``None`` when
#: the events are every step of every row, in order.
EventPick = int | torch.Tensor | None


@dataclass(slots=True)
class BatchInputs:
    """A micro-batch encoded for the forward pass."""

    groups: KeyGroups  # how its events fall into keys (key j has the state in slot groups.slots[j])
    slot_index: torch.Tensor  # groups.slots, on the device
    raw_features: np.ndarray  # the unscaled values of the columns that can hold any (for the scaler)
    raw_columns: np.ndarray  # which columns those are
    inputs: np.ndarray  # one input vector per event
    last_label: np.ndarray  # each key's last label after the batch
    last_ts: np.ndarray  # each key's last timestamp after the batch
    trend_after: np.ndarray  # each key's trend averages after the batch
    rate_after: float  # the stream rate after the batch
    label_values: np.ndarray  # each event's label, NaN where it has none
    label_index: torch.Tensor | None  # the labelled events; None with targets: every event is
    targets: torch.Tensor | None  # their labels; None: no event has one
    columns: torch.Tensor | None  # the input columns the LSTM runs on (None: all)
    weights: list[torch.Tensor]  # the LSTM's weights for those columns


@dataclass(frozen=True, slots=True)
class Rerun:
    """What another optimizer step on a batch runs again: the chunks that hold its events, from
    the (detached) start states the first pass found, with the weights as they are then."""

    inputs: torch.Tensor  # chunk rows x steps x the input columns the LSTM runs on
    h: torch.Tensor
    c: torch.Tensor
    lengths: np.ndarray | None  # each row's steps, for the padded run (None: one fused call)
    pick: EventPick  # where each event's output is in the outputs (see pick_outputs)


@dataclass(slots=True)
class Pending:
    """The forward pass of a batch, kept until the learner's ``learn_batch`` consumes it."""

    events: Sequence[Event]
    batch: BatchInputs
    logits: torch.Tensor
    probabilities: np.ndarray
    finite: bool  # whether every probability came out finite
    new_h0: torch.Tensor
    new_c0: torch.Tensor
    new_window: torch.Tensor
    new_window_len: np.ndarray
    rerun: Rerun | None = None  # how to run its chunks again (for another step on the batch)


def pick_outputs(outputs: torch.Tensor, pick: EventPick) -> torch.Tensor:
    """Each event's output (events x hidden) from ``outputs`` (rows x steps x hidden), by ``pick``."""
    if isinstance(pick, int):
        return outputs[:, pick]
    flat = outputs.reshape(-1, outputs.shape[-1])
    return flat if pick is None else flat.index_select(0, pick)


def pending_pass(
    events: Sequence[Event],
    batch: BatchInputs,
    logits: torch.Tensor,
    new_state: tuple[torch.Tensor, torch.Tensor],
    new_window: tuple[torch.Tensor, np.ndarray],
) -> Pending:
    """The :class:`Pending` pass of ``logits``, with each key's next window start state, and its
    next window and that window's length."""
    probabilities, finite = host_probabilities(logits)
    return Pending(
        events=events,
        batch=batch,
        logits=logits,
        probabilities=probabilities,
        finite=finite,
        new_h0=new_state[0],
        new_c0=new_state[1],
        new_window=new_window[0],
        new_window_len=new_window[1],
    )


def host_probabilities(logits: torch.Tensor) -> tuple[np.ndarray, bool]:
    """The probabilities of ``logits`` on the host, and whether all were finite (non-finite ones
    are returned as 0.5)."""
    probabilities = torch.sigmoid(logits.detach()).cpu().numpy().astype(np.float64)
    # A sum of values in [0, 1] is finite unless one is NaN (the cheapest test: it runs per batch).
    finite = math.isfinite(probabilities[0] if probabilities.size == 1 else np.add.reduce(probabilities))
    if not finite:
        probabilities[~np.isfinite(probabilities)] = 0.5
    return probabilities, finite
