"""Boundary states and the reuse of plans: each way of computing the same thing gives the same
predictions, gradients and weights (the loop and the scan of the cell recurrence, a gather and the
outputs as they are, a plan made anew and one handed out again)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stream_lstm.learner import fused_lstm
from stream_lstm.learner.fused_lstm import cell_states
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.learner.tbptt_plan import ChunkPlan, PlanCache
from stream_lstm.messages.events import Event
from stream_lstm.offline.generator import temporal_stream
from tests.unit.learner.test_lstm_reference import learn_side_by_side


def cells_step_by_step(
    forget: np.ndarray, added: np.ndarray, c0: np.ndarray, key_row: np.ndarray, before: np.ndarray
) -> np.ndarray:
    """The plain recurrence, one key and one step at a time, in float64."""
    out = []
    for key, step in zip(key_row.tolist(), before.tolist(), strict=True):
        cell = c0[key].astype(np.float64)
        for t in range(step + 1):
            cell = forget[key, t] * cell + added[key, t]
        out.append(cell)
    return np.array(out)


@pytest.mark.parametrize(("n_keys", "steps"), [(1, 1), (1, 63), (3, 17), (16, 64), (2, 300), (3, 300)])
@pytest.mark.parametrize("loop_steps_per_key", [0, fused_lstm.HOST_LOOP_STEPS_PER_KEY])
def test_the_cell_states_are_the_recurrence_by_loop_and_by_scan(
    n_keys: int, steps: int, loop_steps_per_key: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fused_lstm, "HOST_LOOP_STEPS_PER_KEY", loop_steps_per_key)  # 0: the scan
    rng = np.random.default_rng(n_keys * 1000 + steps)
    forget = rng.uniform(0.0, 1.0, (n_keys, steps, 5)).astype(np.float32)
    added = rng.normal(0.0, 1.0, (n_keys, steps, 5)).astype(np.float32)
    c0 = rng.normal(0.0, 2.0, (n_keys, 5)).astype(np.float32)
    key_row = rng.integers(0, n_keys, 12)
    before = rng.integers(0, steps, 12)
    got = cell_states(
        torch.from_numpy(forget), torch.from_numpy(added), torch.from_numpy(c0), key_row, before
    )
    assert got.dtype == torch.float32 and got.shape == (12, 5)
    expected = cells_step_by_step(forget, added, c0, key_row, before)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("batch_size", "n_keys"), [(64, 1), (48, 2), (200, 3)])
def test_the_scan_learns_like_the_loop(batch_size: int, n_keys: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks after the first start from boundary states; the two ways of finding their cell
    states must give the same predictions, gradients and weights."""
    events = list(temporal_stream(1200, n_keys=n_keys, seed=8))
    looped = LSTMLearner(hidden_size=8, tbptt_steps=8, device="cpu", lr_boost_half_life=0)
    scanned = LSTMLearner(hidden_size=8, tbptt_steps=8, device="cpu", lr_boost_half_life=0)
    boundaries = scanned._boundary_states

    def by_scan(*args):  # type: ignore[no-untyped-def]
        with monkeypatch.context() as patch:
            patch.setattr(fused_lstm, "HOST_LOOP_STEPS_PER_KEY", 0)
            return boundaries(*args)

    scanned._boundary_states = by_scan  # type: ignore[method-assign]
    learn_side_by_side(looped, scanned, events, batch_size, atol=1e-5)


class GatheringPlans(PlanCache):
    """Plans whose events' outputs are always gathered by index, even where they fill the rows."""

    def plan(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        plan = super().plan(*args, **kwargs)
        if isinstance(plan, ChunkPlan) and plan.event_outputs is None:
            width = (
                plan.single_chunk_steps if plan.later_chunks is None else plan.later_chunks.positions.shape[1]
            )
            flat = plan.event_chunk_row * width + plan.event_step
            plan = dataclasses.replace(plan, event_outputs=flat)
            self.gathered += 1
        return plan

    gathered = 0


def test_outputs_taken_as_they_are_learn_like_outputs_gathered() -> None:
    """One key whose 64 new events fill its chunks of 8: the outputs are the events' own, in
    order, and are taken without a gather; the gather must give the same."""
    events = list(temporal_stream(1280, n_keys=1, seed=4))
    as_they_are = LSTMLearner(hidden_size=8, tbptt_steps=8, device="cpu", lr_boost_half_life=0)
    gathered = LSTMLearner(hidden_size=8, tbptt_steps=8, device="cpu", lr_boost_half_life=0)
    gathered._plans = plans = GatheringPlans()
    learn_side_by_side(as_they_are, gathered, events, 64, atol=1e-6)
    assert plans.gathered >= 15  # the path meant here ran on most batches


def test_a_plan_is_handed_out_again_only_for_a_batch_of_the_same_shape() -> None:
    learner = LSTMLearner(hidden_size=4, tbptt_steps=4, device="cpu")
    events = list(temporal_stream(300, n_keys=1, seed=2))
    learner.predict_batch(events[:40])
    learner.learn_batch(events[:40])
    plans = []
    for start in (40, 80, 120):  # one key, 40 new events, a full window: the same shape
        batch = events[start : start + 40]
        learner.predict_batch(batch)
        plans.append(learner._plans._plan)
        learner.learn_batch(batch)
    assert plans[0] is plans[1] is plans[2]
    learner.predict_batch(events[160:190])  # 30 new events: another shape, another plan
    assert learner._plans._plan is not plans[0]
    assert learner._plans._plan.scatter.size == 30


def test_keys_of_one_chunk_stay_out_of_the_boundary_run() -> None:
    """Many keys in the steady state beside one key with many new events: only the chunked key
    runs through its sequence for its boundary states; the others take one step each (a run of
    every key over the longest sequence would cost as many times more as there are keys)."""
    learner = LSTMLearner(hidden_size=4, tbptt_steps=4, device="cpu")
    warm = [Event(key=str(i % 50), features={"x": float(i)}, label=i % 2) for i in range(200)]
    learner.predict_batch(warm)
    learner.learn_batch(warm)
    runs: list[tuple[int, int]] = []
    boundaries = learner._boundary_states

    def recording(sequences, keys, positions, *rest):  # type: ignore[no-untyped-def]
        runs.append((np.unique(keys).size, int(positions.max())))
        return boundaries(sequences, keys, positions, *rest)

    learner._boundary_states = recording  # type: ignore[method-assign]
    steady = [Event(key=str(i), features={"x": 1.0}, label=1) for i in range(50)]
    bursty = [Event(key="burst", features={"x": float(i)}, label=i % 2) for i in range(40)]
    batch = steady + bursty
    learner.predict_batch(batch)
    learner.learn_batch(batch)
    assert runs == [(1, 40 - 4 + 1)]  # the bursty key alone, to one step into its last chunk
