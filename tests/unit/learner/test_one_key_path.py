"""The one-key path of the forward pass (a stream of one key, batch after batch): the general chunked
path's tensors as slices of the key's sequence, with exactly the same results."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stream_lstm.learner.batch_columns import group_by_slot
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.learner.tbptt_plan import ChunkPlan, one_key_chunks, plan_chunks
from stream_lstm.messages.events import Event
from stream_lstm.offline.evaluate import batches
from stream_lstm.offline.generator import temporal_stream


class OneKeyCounter:
    """Counts the batches that took the one-key path."""

    def __init__(self, learner: LSTMLearner) -> None:
        self.batches = 0
        one_key = learner._forward_one_key

        def counting(*args: object) -> object:
            self.batches += 1
            return one_key(*args)  # type: ignore[arg-type]

        learner._forward_one_key = counting  # type: ignore[method-assign]


def one_key_stream(n_events: int, *, unlabelled_every: int = 0) -> list[Event]:
    events = [dataclasses.replace(event, key="only") for event in temporal_stream(n_events, n_keys=1, seed=4)]
    if unlabelled_every:
        events = [
            dataclasses.replace(event, label=None) if i % unlabelled_every == 0 else event
            for i, event in enumerate(events)
        ]
    return events


def assert_same_learning(
    fast: LSTMLearner, general: LSTMLearner, events: list[Event], batch_size: int
) -> None:
    """Both learners give exactly the same predictions, weights, Adam state and key state."""
    for chunk in batches(events, batch_size):
        np.testing.assert_array_equal(fast.predict_batch(chunk), general.predict_batch(chunk))
        fast.learn_batch(chunk)
        general.learn_batch(chunk)
    for mine, theirs in zip(fast.network.parameters(), general.network.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    ours, reference = fast.optimizer.state_dict()["state"], general.optimizer.state_dict()["state"]
    assert ours.keys() == reference.keys()
    for index, state in ours.items():
        for name, value in state.items():
            assert torch.equal(value, reference[index][name]), (index, name)
    for name in ("h0", "c0", "window"):
        assert torch.equal(getattr(fast.keys, name), getattr(general.keys, name)), name
    np.testing.assert_array_equal(fast.keys.window_len, general.keys.window_len)


@pytest.mark.parametrize(
    ("batch_size", "tbptt_steps", "unlabelled_every", "least_one_key"),
    [
        (64, 8, 0, 20),  # the default: 8 chunks of 8 after the window
        (64, 8, 7, 20),  # some events without a label
        (22, 4, 0, 40),  # a first chunk that holds window inputs too (22 is not a multiple of 4)
        (9, 8, 0, 0),  # 9 = 8 + 1 events: the first chunk starts at the sequence's start
        (3, 8, 0, 0),  # a few events: the steady-state path of full windows
    ],
)
def test_the_one_key_path_learns_exactly_like_the_general_path(
    batch_size: int, tbptt_steps: int, unlabelled_every: int, least_one_key: int
) -> None:
    events = one_key_stream(1800, unlabelled_every=unlabelled_every)

    def learner() -> LSTMLearner:
        return LSTMLearner(hidden_size=8, tbptt_steps=tbptt_steps, device="cpu", steps_per_batch=2)

    fast, general = learner(), learner()
    general._one_key_path = False
    taken = OneKeyCounter(fast)
    assert_same_learning(fast, general, events, batch_size)
    assert taken.batches >= least_one_key
    if not least_one_key:
        assert taken.batches == 0


def test_a_batch_with_a_second_key_takes_the_general_path() -> None:
    events = one_key_stream(640)
    events[300] = dataclasses.replace(events[300], key="other")
    fast = LSTMLearner(hidden_size=8, device="cpu")
    general = LSTMLearner(hidden_size=8, device="cpu")
    general._one_key_path = False
    taken = OneKeyCounter(fast)
    assert_same_learning(fast, general, events, 64)
    assert 0 < taken.batches < 10


def plan_of(rows: list[int], window_len: list[int], k: int) -> ChunkPlan:
    return plan_chunks(group_by_slot(np.array(rows)), np.array(window_len), k, k - 1)


def test_which_plans_are_one_keys() -> None:
    assert one_key_chunks(plan_of([0] * 64, [7], 8), 8, 7)
    assert one_key_chunks(plan_of([0] * 22, [3], 4), 4, 3)
    assert not one_key_chunks(plan_of([0] * 9, [7], 8), 8, 7)  # chunk 0 starts at step 0
    assert not one_key_chunks(plan_of([0] * 64, [5], 8), 8, 7)  # the window is not full yet
    assert not one_key_chunks(plan_of([0] * 32 + [1] * 32, [7, 7], 8), 8, 7)  # two keys
    assert one_key_chunks(plan_of([0] * 5, [7], 8), 8, 7)  # one chunk row, after three window inputs
