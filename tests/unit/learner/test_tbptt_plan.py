"""The TBPTT plan: NumPy only, and every event's output read from the step that holds its input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from stream_lstm.learner.batch_columns import KeyGroups, group_by_slot
from stream_lstm.learner.tbptt_plan import fits_full_windows, plan_chunks, plan_full_windows


def test_the_plan_is_made_without_torch() -> None:
    script = "import sys\nimport stream_lstm.learner.tbptt_plan\nprint('torch' in sys.modules)\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"


def random_batch(rng: np.random.Generator, n_events: int, n_keys: int) -> KeyGroups:
    return group_by_slot(rng.integers(0, n_keys, n_events) * 3)


def chunk_of_each_step(k: int, total_len: int) -> list[int]:
    """The chunk of each position of a sequence of ``total_len``, chunks of ``k`` from its end."""
    return [(position - total_len) // k for position in range(total_len)]


@pytest.mark.parametrize(("n_events", "n_keys", "k", "seed"), [(1, 1, 1, 0), (40, 3, 4, 1), (200, 20, 3, 2)])
def test_chunks_hold_each_event_at_its_sequence_position(
    n_events: int, n_keys: int, k: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    window_steps = max(k - 1, 1)
    for _ in range(20):
        groups = random_batch(rng, n_events, n_keys)
        window_len = rng.integers(0, k, groups.counts.size)  # at most k - 1 inputs
        plan = plan_chunks(groups, window_len, k, window_steps)
        total_len = window_len + groups.counts
        event_pos = window_len[groups.row] + groups.rank
        assert plan.seq_len == max(int(total_len.max()), window_steps)
        np.testing.assert_array_equal(plan.scatter, groups.row * plan.seq_len + event_pos)
        assert (plan.chunk_len <= k).all() and (plan.chunk_len >= 1).all()
        chunks = plan.later_chunks
        if chunks is None:  # one chunk per key, from position 0
            np.testing.assert_array_equal(plan.event_chunk_row, groups.row)
            np.testing.assert_array_equal(plan.event_step, event_pos)
            assert (total_len <= k).all()
        else:
            read = chunks.positions[plan.event_chunk_row, plan.event_step]
            np.testing.assert_array_equal(read, event_pos)
            np.testing.assert_array_equal(chunks.chunk_key[plan.event_chunk_row], groups.row)
            # A chunk never spans a boundary of the chunks counted from the end of its sequence.
            for row in range(chunks.chunk_key.size):
                key = chunks.chunk_key[row]
                steps = chunks.positions[row, : plan.chunk_len[row]]
                assert len({chunk_of_each_step(k, int(total_len[key]))[s] for s in steps}) == 1
            last_rows = np.array(
                [np.flatnonzero(chunks.chunk_key == key).max() for key in range(total_len.size)]
            )
            np.testing.assert_array_equal(
                chunks.positions[last_rows, plan.chunk_len[last_rows] - 1], total_len - 1
            )
            np.testing.assert_array_equal(chunks.chunk_key[chunks.later], chunks.boundary_keys)
        # Each event's output as a flat index into the chunk rows' steps (None: all, in order).
        width = plan.single_chunk_steps if chunks is None else chunks.positions.shape[1]
        flat = plan.event_chunk_row * width + plan.event_step
        if plan.event_outputs is None:
            np.testing.assert_array_equal(flat, np.arange(plan.chunk_len.size * width))
        else:
            np.testing.assert_array_equal(plan.event_outputs, flat)
        window = plan.next_window
        np.testing.assert_array_equal(window.window_len, np.minimum(total_len, k - 1))
        np.testing.assert_array_equal(window.long_rows, np.flatnonzero(total_len >= k))
        for key in range(total_len.size):
            n = int(window.window_len[key])
            expected = np.arange(total_len[key] - n, total_len[key])
            np.testing.assert_array_equal(window.positions[key, :n], expected)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_the_steady_state_plan_puts_every_new_event_in_the_last_chunk(k: int) -> None:
    rng = np.random.default_rng(k)
    for n_events, n_keys in ((30, 30), (30, 10), (64, 16)):
        groups = random_batch(rng, n_events, n_keys)
        window_len = np.full(groups.counts.size, k - 1)
        if not fits_full_windows(groups.counts, window_len, k, k - 1):
            assert int(groups.counts.max()) > k
            continue
        plan = plan_full_windows(groups, k)
        if plan.scatter is None:
            assert (groups.counts == 1).all() and plan.event_step == k - 1
            continue
        assert plan.chunk_positions is not None
        seq_len = k - 1 + plan.new_steps
        np.testing.assert_array_equal(plan.scatter, groups.row * seq_len + k - 1 + groups.rank)
        read = plan.chunk_positions[groups.row, plan.event_step]
        np.testing.assert_array_equal(read, k - 1 + groups.rank)
        np.testing.assert_array_equal(plan.chunk_positions[:, -1], k - 2 + groups.counts)
        for step, rows in enumerate(plan.warm_up_rows):
            np.testing.assert_array_equal(rows, np.flatnonzero(groups.counts - 1 > step))


def test_partial_or_long_windows_are_not_the_steady_state() -> None:
    counts = np.array([1, 2])
    assert fits_full_windows(counts, np.array([3, 3]), 4, 3)
    assert not fits_full_windows(counts, np.array([3, 2]), 4, 3)
    assert not fits_full_windows(np.array([5, 1]), np.array([3, 3]), 4, 3)
    assert not fits_full_windows(np.array([1]), np.array([1]), 1, 1)  # k = 1: no window to reuse
