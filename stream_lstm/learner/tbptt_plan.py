"""Truncated BPTT planned on the host: which inputs of a batch run in which chunk, as index arrays.

Why a module of its own: the chunking is pure bookkeeping on the batch's key groups (how many
inputs each key holds in its window, how many new events it brings), so it is planned here in
NumPy, without torch (a test imports it alone and checks that torch stays out), and the forward
pass (:mod:`stream_lstm.learner.forward`) only gathers and runs what a plan names.

A key's sequence in a batch is its stored window (``window_len`` inputs) followed by its new
events. It is cut into chunks of ``k`` steps counted from its end (``k`` is ``tbptt_steps``), so
a key's last chunk holds its last ``k`` inputs and its first chunk (chunk 0) may be shorter; the
state is detached between chunks. Its next window is its last ``k - 1`` inputs, whose start
state is one step into its last chunk.

Sequences are laid out as rows of a ``(keys, seq_len)`` grid; a position in it is
``row * seq_len + step`` when flat.

A stream of few keys brings batches of the same shape again and again (one key and 64 new events
after a full window, batch after batch), so :class:`PlanCache` keeps the last plan for the next
batch of that shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream_lstm.learner.batch_columns import KeyGroups


@dataclass(frozen=True, slots=True)
class FullWindowPlan:
    """The steady state: every key has a full window (``k - 1`` inputs) and ``m <= k`` new events.

    A key's ``k - 1 + m`` inputs split, from the end, into ``m - 1`` window inputs (its state is
    advanced over them without gradients) and a last chunk of exactly ``k`` inputs that holds
    every new event. With one new event per key (the commonest case) the last chunk is the
    window followed by the event, and nothing else is needed: the fields that say how to build
    the grid are then ``None`` or empty.
    """

    #: Step of each event in its key's last chunk (``k - 1`` for all when every key has one).
    event_step: np.ndarray | int
    #: Most new events of one key: the grid is the window and this many steps more.
    new_steps: int
    #: Flat grid position of each new event's input (``None`` with one new event per key).
    scatter: np.ndarray | None
    #: Key x step: the grid position of each input of the key's last chunk (``None`` likewise).
    chunk_positions: np.ndarray | None
    #: For warm-up step ``s``: the keys (rows) whose state advances over window input ``s``.
    warm_up_rows: tuple[np.ndarray, ...]


@dataclass(frozen=True, slots=True)
class LaterChunks:
    """The chunks that run when some key's new events reach past its chunk 0, one row each.

    Only chunks that hold a new event run with gradients: those from the chunk of each key's
    first new event to its last chunk.
    """

    #: The key (grid row) of each chunk row.
    chunk_key: np.ndarray
    #: Chunk row x step: the grid step of each input (clamped to the grid past the chunk's end).
    positions: np.ndarray
    #: The chunk rows that start after their key's chunk 0, from the state at their boundary.
    later: np.ndarray
    #: For those rows: their key, and the step of the sequence at which they start.
    boundary_keys: np.ndarray
    boundary_steps: np.ndarray


@dataclass(frozen=True, slots=True)
class NextWindow:
    """How each key's next window and its start state come out of the batch's grid."""

    #: Keys whose sequence holds at least ``k`` inputs: their next start state is one step into
    #: their last chunk, which the fused LSTM does not return, so it is found again (among the
    #: boundary states, or by one more step).
    long_rows: np.ndarray
    #: The grid step of that input, for each of ``long_rows``.
    long_steps: np.ndarray
    #: Inputs in each key's next window.
    window_len: np.ndarray
    #: Key x window step: the grid step each input of the next window is taken from.
    positions: np.ndarray


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """The general case: windows of any length (new keys, keys filling up), any number of events."""

    #: Steps in the grid: the longest sequence, and at least a window.
    seq_len: int
    #: Flat grid position of each new event's input.
    scatter: np.ndarray
    #: Steps of each chunk row that runs (one row per key when ``later_chunks`` is ``None``).
    chunk_len: np.ndarray
    #: Steps the single-chunk run takes from the grid (the longest sequence, at least 1).
    single_chunk_steps: int
    #: The chunk row and the step in it of each event's output.
    event_chunk_row: np.ndarray
    event_step: np.ndarray
    #: The same as a flat index into the chunk rows' steps; ``None`` when the events are every
    #: step of every row, in order (one key whose new events fill its chunks: the outputs as
    #: they are, without a gather).
    event_outputs: np.ndarray | None
    #: ``None`` when every key's sequence is one chunk (run from position 0, from the stored
    #: state: the usual case).
    later_chunks: LaterChunks | None
    next_window: NextWindow


def fits_full_windows(counts: np.ndarray, window_len: np.ndarray, k: int, window_steps: int) -> bool:
    """Whether a batch with ``counts`` new events per key, whose keys hold ``window_len`` inputs
    in windows of ``window_steps``, is in the steady state of :class:`FullWindowPlan`."""
    return k > 1 and int(counts.max()) <= k and bool((window_len == window_steps).all())


def plan_full_windows(groups: KeyGroups, k: int) -> FullWindowPlan:
    """The :class:`FullWindowPlan` of a batch of key ``groups``."""
    counts, event_row, event_rank = groups.counts, groups.row, groups.rank
    most = int(counts.max())
    if most == 1:
        return FullWindowPlan(
            event_step=k - 1, new_steps=1, scatter=None, chunk_positions=None, warm_up_rows=()
        )
    window_steps = k - 1
    seq_len = window_steps + most
    skipped = counts - 1  # window inputs before the last chunk
    return FullWindowPlan(
        event_step=k - 1 - skipped[event_row] + event_rank,
        new_steps=most,
        scatter=event_row * seq_len + window_steps + event_rank,
        chunk_positions=skipped[:, None] + np.arange(k),
        warm_up_rows=tuple(np.flatnonzero(skipped > step) for step in range(most - 1)),
    )


def plan_chunks(groups: KeyGroups, window_len: np.ndarray, k: int, window_steps: int) -> ChunkPlan:
    """The :class:`ChunkPlan` of a batch of key ``groups``, whose key ``j`` holds ``window_len[j]``
    inputs in a window of ``window_steps``."""
    counts, event_row, event_rank = groups.counts, groups.row, groups.rank
    total_len = window_len + counts
    seq_len = max(int(total_len.max(initial=0)), window_steps)
    event_pos = window_len[event_row] + event_rank
    n_chunks = (total_len + k - 1) // k
    first_len = total_len - (n_chunks - 1) * k
    after_first = event_pos - first_len[event_row]
    event_chunk = np.where(after_first < 0, 0, 1 + after_first // k)
    event_step = np.where(after_first < 0, event_pos, after_first % k)
    if int(n_chunks.max(initial=0)) <= 1:
        later_chunks = None
        chunk_len = total_len
        event_chunk_row = event_row
    else:
        first_new = np.where(window_len < first_len, 0, 1 + (window_len - first_len) // k)
        per_key = n_chunks - first_new
        row_of_key = np.concatenate([[0], np.cumsum(per_key)[:-1]])
        chunk_key = np.repeat(np.arange(counts.size), per_key)
        chunk_j = np.arange(chunk_key.size) - row_of_key[chunk_key] + first_new[chunk_key]
        chunk_start = np.where(chunk_j == 0, 0, first_len[chunk_key] + (chunk_j - 1) * k)
        chunk_len = np.where(chunk_j == 0, first_len[chunk_key], k)
        later = np.flatnonzero(chunk_j > 0)
        later_chunks = LaterChunks(
            chunk_key=chunk_key,
            positions=np.minimum(chunk_start[:, None] + np.arange(int(chunk_len.max())), seq_len - 1),
            later=later,
            boundary_keys=chunk_key[later],
            boundary_steps=chunk_start[later],
        )
        event_chunk_row = row_of_key[event_row] + event_chunk - first_new[event_row]
    single_chunk_steps = int(total_len.max(initial=1))
    width = single_chunk_steps if later_chunks is None else later_chunks.positions.shape[1]
    event_outputs = event_chunk_row * width + event_step
    if (
        event_outputs.size == chunk_len.size * width
        and (event_outputs == np.arange(event_outputs.size)).all()
    ):
        event_outputs = None
    return ChunkPlan(
        seq_len=seq_len,
        scatter=event_row * seq_len + event_pos,
        chunk_len=chunk_len,
        single_chunk_steps=single_chunk_steps,
        event_chunk_row=event_chunk_row,
        event_step=event_step,
        event_outputs=event_outputs,
        later_chunks=later_chunks,
        next_window=_next_window(total_len, seq_len, k, window_steps),
    )


def one_key_chunks(plan: ChunkPlan, k: int, window_steps: int) -> bool:
    """Whether ``plan`` is one key's, with a full window, whose chunk rows are all ``k`` steps long,
    consecutive, all after the sequence's first step, and end at the sequence's end, and whose next
    window is its last ``window_steps`` inputs (what
    :meth:`~stream_lstm.learner.forward.ChunkedForward._forward_one_key` takes as slices)."""
    later = plan.later_chunks
    if later is None or plan.chunk_len.size != later.later.size or plan.next_window.window_len.size != 1:
        return False
    window = plan.next_window
    total = int(window.positions[0, -1]) + 1
    rows = later.chunk_key.size
    first = total - rows * k
    return (
        first > 0
        and int(plan.scatter[0]) == window_steps  # the first new event comes after a full window
        and int(window.window_len[0]) == window_steps
        and window.long_rows.size == 1
        and bool((window.long_steps > 0).all())
        and bool((plan.chunk_len == k).all())
        and plan.seq_len == total
        and bool((later.positions == first + np.arange(rows * k).reshape(rows, k)).all())
        and bool((window.positions[0] == total - window_steps + np.arange(window_steps)).all())
    )


def _next_window(total_len: np.ndarray, seq_len: int, k: int, window_steps: int) -> NextWindow:
    """The :class:`NextWindow` of keys whose sequences hold ``total_len`` inputs each."""
    long_rows = np.flatnonzero(total_len >= k)
    window_len = np.minimum(total_len, k - 1)
    positions = np.minimum((total_len - window_len)[:, None] + np.arange(window_steps)[None, :], seq_len - 1)
    return NextWindow(
        long_rows=long_rows, long_steps=total_len[long_rows] - k, window_len=window_len, positions=positions
    )


class PlanCache:
    """The plan of the last batch, given again for a batch of the same shape.

    A batch's shape is which key each event belongs to (``groups.row``, from which the counts and
    ranks follow) and how many inputs each key's window holds: two batches of the same shape get
    the same plan. Why: planning costs as much as a tenth of a small batch's forward pass, and a
    stream of one key or a few brings the same shape batch after batch. Handing the same plan out
    again is safe because nothing writes into a plan's arrays once it is made (the learner copies
    what it keeps of them, such as the next windows' lengths, into its key store).
    """

    def __init__(self) -> None:
        self._shape: tuple[bytes, bytes, int, int, bool] | None = None
        self._plan: FullWindowPlan | ChunkPlan | None = None

    def plan(
        self, groups: KeyGroups, window_len: np.ndarray, k: int, window_steps: int, *, full_windows: bool
    ) -> FullWindowPlan | ChunkPlan:
        """The batch's :class:`FullWindowPlan` when ``full_windows`` and it fits one
        (:func:`fits_full_windows`), else its :class:`ChunkPlan`."""
        shape = (
            groups.row.tobytes(),
            window_len.astype(np.int64, copy=False).tobytes(),
            k,
            window_steps,
            full_windows,
        )
        if shape != self._shape or self._plan is None:
            if full_windows and fits_full_windows(groups.counts, window_len, k, window_steps):
                self._plan = plan_full_windows(groups, k)
            else:
                self._plan = plan_chunks(groups, window_len, k, window_steps)
            self._shape = shape
        return self._plan
