"""The batched forward pass: every key of a micro-batch, its window then its new events, at once.

The batch is encoded on the host (:mod:`stream_lstm.learner.encoding`), its chunks are planned
in NumPy (:mod:`stream_lstm.learner.tbptt_plan`), and here the inputs go to the device and run
through the LSTM as the plan says. The result is kept as a :class:`Pending` pass until the
learner backpropagates its loss and writes the keys' new states back.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stream_lstm.learner.batch_columns import KeyGroups, group_by_slot, optional_floats
from stream_lstm.learner.batch_columns import keys as batch_keys
from stream_lstm.learner.batch_columns import labels as batch_labels
from stream_lstm.learner.encoding import EXTRA_INPUTS, InputEncoding
from stream_lstm.learner.fused_lstm import FusedLSTMCalls, gather_steps, narrow
from stream_lstm.learner.tbptt_plan import ChunkPlan, FullWindowPlan, LaterChunks, NextWindow, PlanCache
from stream_lstm.learner.transfer import to_device
from stream_lstm.messages.events import Event


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


class ChunkedForward(InputEncoding, FusedLSTMCalls):
    """The forward pass (a base of the LSTM learner,
    :class:`~stream_lstm.learner.lstm_learner.LSTMLearner`).

    Three paths: the steady state (:meth:`_forward_full_windows`, every key has a full window and
    at most ``tbptt_steps`` new events: one fused call), one key's chunks as slices of its
    sequence (:meth:`_forward_one_key`, on the CPU) and the general chunked one
    (:meth:`_forward_chunked`). Tests switch ``_full_window_path`` and ``_one_key_path`` off to
    compare them with the general path.
    """

    tbptt_steps: int
    _device: torch.device
    _lstm_weights: list[torch.Tensor]
    _full_window_path: bool
    _one_key_path: bool
    _one_key_plan: tuple[ChunkPlan, bool] | None
    _narrow_inputs: bool
    _plans: PlanCache

    def _forward(self, events: Sequence[Event]) -> Pending:
        groups = group_by_slot(self.keys.lookup(batch_keys(events)))
        slots = groups.slots
        label_values = optional_floats(batch_labels(events))  # NaN: no label
        encoded = self._encode(events, groups, slots, label_values)
        raw, inputs, last_label, last_ts, trend_after, rate_after = encoded
        raw_features, raw_columns = raw
        columns = self._input_columns(raw_columns)
        label_index, targets = self._label_tensors(label_values)
        with torch.set_grad_enabled(targets is not None):
            weights = self._weights_for(columns)
        batch = BatchInputs(
            groups=groups,
            slot_index=to_device(slots, self._device),
            raw_features=raw_features,
            raw_columns=raw_columns,
            inputs=inputs,
            last_label=last_label,
            last_ts=last_ts,
            trend_after=trend_after,
            rate_after=rate_after,
            label_values=label_values,
            label_index=label_index,
            targets=targets,
            columns=columns,
            weights=weights,
        )
        plan = self._plans.plan(
            groups,
            self.keys.window_len[slots],
            self.tbptt_steps,
            self.keys.window_steps,
            full_windows=self._full_window_path,
        )
        if isinstance(plan, FullWindowPlan):
            return self._forward_full_windows(events, batch, plan)
        if self._one_key_path and self._device.type == "cpu" and self._takes_one_key_path(plan):
            return self._forward_one_key(events, batch, plan)
        return self._forward_chunked(events, batch, plan)

    def _forward_again(self, pending: Pending) -> Pending:
        """``pending`` with its logits computed again by the weights as they are now (for another
        optimizer step on the batch; nothing else of it changes).

        Only the chunks that hold the batch's events run again, from the start states the first
        pass found: those are detached in truncated BPTT anyway, and finding them is most of a
        long sequence's forward pass. The key states written after the batch stay those of the
        first pass, the one the predictions came from. Nothing is counted twice.
        """
        batch, rerun = pending.batch, pending.rerun
        assert rerun is not None
        batch.weights = weights = self._weights_for(batch.columns)  # a gathered w_ih is stale
        with torch.enable_grad():
            if rerun.lengths is None:
                outputs = self._lstm_call(rerun.inputs, rerun.h, rerun.c, weights)[0]
            else:
                outputs = self._run_lstm(rerun.inputs, rerun.lengths, (rerun.h, rerun.c), weights)
            logits = self._head(pick_outputs(outputs, rerun.pick))
        # Only the logits are new: the predictions, their finiteness and the key states stay the
        # first pass's (reading probabilities back would make a GPU wait, for nothing).
        return dataclasses.replace(pending, logits=logits)

    def _forward_full_windows(
        self, events: Sequence[Event], batch: BatchInputs, plan: FullWindowPlan
    ) -> Pending:
        """The steady state of :meth:`_forward`, in far fewer operations (see
        :class:`~stream_lstm.learner.tbptt_plan.FullWindowPlan`).

        Only the last chunks run with gradients, all keys in one fused call: each starts from the
        key's state advanced ``m - 1`` steps without gradients (no steps at all in the commonest
        case, ``m = 1``). A key's next window is its last chunk without its first input.
        """
        device = self._device
        columns, weights = batch.columns, batch.weights
        window = self.keys.window.index_select(0, batch.slot_index)
        h, c = self.keys.h0.index_select(0, batch.slot_index), self.keys.c0.index_select(0, batch.slot_index)
        new_inputs = to_device(batch.inputs, device)
        n_keys = batch.groups.counts.size
        if plan.scatter is None:
            chunks = torch.cat([window, new_inputs.unsqueeze(1)], 1)
        else:
            assert plan.chunk_positions is not None
            sequences = torch.cat([window, window.new_zeros(n_keys, plan.new_steps, self.input_size)], 1)
            sequences.view(-1, self.input_size).index_copy_(0, to_device(plan.scatter, device), new_inputs)
            chunks = gather_steps(sequences, np.arange(n_keys), plan.chunk_positions)
            for step, rows in enumerate(plan.warm_up_rows):
                h, c = self._step_rows(sequences, rows, np.full(rows.size, step), (h, c), batch)
        model_chunks = narrow(chunks, columns)
        with torch.set_grad_enabled(batch.targets is not None):
            outputs, _, _ = self._lstm_call(model_chunks, h, c, weights)
            pick: EventPick = plan.event_step
            if not isinstance(pick, int):
                pick = to_device(batch.groups.row * self.tbptt_steps + pick, device)
            logits = self._head(pick_outputs(outputs, pick))
        with torch.no_grad():
            new_h0, new_c0 = torch.lstm_cell(model_chunks[:, 0], (h, c), *weights)
        new_window_len = np.full(n_keys, self.keys.window_steps, dtype=np.int64)
        pending = _pending(events, batch, logits, (new_h0, new_c0), (chunks[:, 1:], new_window_len))
        if batch.targets is not None:
            pending.rerun = Rerun(model_chunks, h, c, None, pick)
        return pending

    def _takes_one_key_path(self, plan: ChunkPlan) -> bool:
        """:func:`one_key_chunks` of ``plan``, worked out once per plan (the plan cache gives the
        same plan again for a batch of the same shape)."""
        if self._one_key_plan is None or self._one_key_plan[0] is not plan:
            self._one_key_plan = (plan, one_key_chunks(plan, self.tbptt_steps, self.keys.window_steps))
        return self._one_key_plan[1]

    def _forward_one_key(self, events: Sequence[Event], batch: BatchInputs, plan: ChunkPlan) -> Pending:
        """:meth:`_forward_chunked` for a batch of one key with a full window whose chunks all start
        after the sequence's first step (:func:`one_key_chunks`; a stream of one key, batch after
        batch): the same tensors, as slices and views of its sequence rather than gathers. On the
        CPU only: there the kernels give the same numbers for a view as for a copy (a test holds
        the two paths equal bit for bit); a GPU's kernels may choose by alignment.

        The key's sequence is its window followed by its new events; its chunks are the sequence's
        last ``rows x k`` inputs, and its next window is its last ``k - 1``.
        """
        device = self._device
        store = self.keys
        columns, weights = batch.columns, batch.weights
        slot = int(batch.groups.slots[0])
        later = plan.later_chunks
        assert later is not None
        sequence = torch.cat([store.window[slot : slot + 1], to_device(batch.inputs, device).unsqueeze(0)], 1)
        model_sequence = narrow(sequence, columns)
        h, c = store.h0[slot : slot + 1], store.c0[slot : slot + 1]
        rows = later.chunk_key.size
        window = plan.next_window
        positions = np.concatenate([later.boundary_steps, window.long_steps + 1])
        h_b, c_b = self._boundary_states(
            model_sequence, np.zeros(positions.size, dtype=np.int64), positions, h, c, weights
        )
        steps = self.tbptt_steps
        first = int(later.boundary_steps[0])
        model_inputs = model_sequence[0, first:].view(rows, steps, -1)
        chunk_state = (h_b[:rows], c_b[:rows])
        with torch.set_grad_enabled(batch.targets is not None):
            outputs = self._run_lstm(model_inputs, plan.chunk_len, chunk_state, weights)
            pick = None if plan.event_outputs is None else to_device(plan.event_outputs, device)
            logits = self._head(pick_outputs(outputs, pick))
        new_window = sequence[:, int(window.positions[0, 0]) :]
        pending = _pending(events, batch, logits, (h_b[rows:], c_b[rows:]), (new_window, window.window_len))
        if batch.targets is not None:
            pending.rerun = Rerun(model_inputs, *chunk_state, plan.chunk_len, pick)
        return pending

    def _forward_chunked(self, events: Sequence[Event], batch: BatchInputs, plan: ChunkPlan) -> Pending:
        """The general path of :meth:`_forward`: every key's window and new events in a grid,
        cut into the chunks of ``plan``."""
        device = self._device
        store = self.keys
        columns, weights = batch.columns, batch.weights
        n_keys = batch.groups.counts.size
        sequences = torch.cat(
            [
                store.window.index_select(0, batch.slot_index),
                torch.zeros(n_keys, plan.seq_len - store.window_steps, self.input_size, device=device),
            ],
            dim=1,
        )
        sequences.view(-1, self.input_size).index_copy_(
            0, to_device(plan.scatter, device), to_device(batch.inputs, device)
        )
        h, c = store.h0.index_select(0, batch.slot_index), store.c0.index_select(0, batch.slot_index)
        window = plan.next_window
        if plan.later_chunks is None:
            model_inputs = narrow(sequences[:, : plan.single_chunk_steps], columns)
            chunk_state = (h, c)
            # The next window is the last k - 1 inputs; its start state is one step into the last
            # chunk, which the fused LSTM does not return, so that one step is taken again here.
            new_state = chunk_state
            if window.long_rows.size:
                new_state = self._step_rows(sequences, window.long_rows, window.long_steps, new_state, batch)
        else:
            later = self._later_chunks(sequences, plan.later_chunks, window, (h, c), batch)
            model_inputs, chunk_state, new_state = later
        with torch.set_grad_enabled(batch.targets is not None):
            outputs = self._run_lstm(model_inputs, plan.chunk_len, chunk_state, weights)
            pick = None if plan.event_outputs is None else to_device(plan.event_outputs, device)
            logits = self._head(pick_outputs(outputs, pick))
        new_window = gather_steps(sequences, np.arange(n_keys), window.positions)
        pending = _pending(events, batch, logits, new_state, (new_window, window.window_len))
        if batch.targets is not None:
            pending.rerun = Rerun(model_inputs, *chunk_state, plan.chunk_len, pick)
        return pending

    def _later_chunks(
        self,
        sequences: torch.Tensor,
        chunks: LaterChunks,
        window: NextWindow,
        state: tuple[torch.Tensor, torch.Tensor],
        batch: BatchInputs,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The inputs (in the columns the LSTM runs on) and start states of the chunk rows of
        ``chunks`` (``state``: each key's stored state), and the start state of each key's next
        ``window``."""
        device = self._device
        h, c = state
        key_index = to_device(chunks.chunk_key, device)
        start_h, start_c = h.index_select(0, key_index), c.index_select(0, key_index)
        # A chunk after chunk 0 starts from the state at its boundary, and the next window of a key
        # with such chunks one step into its last chunk: the states just before those positions
        # (see _boundary_states; the second kind adds at most one step to the keys' run).
        n_later, long_rows, long_steps = chunks.later.size, window.long_rows, window.long_steps
        spans_chunks = long_steps > 0
        folded = long_rows[spans_chunks]
        model_sequences = narrow(sequences, batch.columns)
        h_b, c_b = self._boundary_states(
            model_sequences,
            np.concatenate([chunks.boundary_keys, folded]),
            np.concatenate([chunks.boundary_steps, long_steps[spans_chunks] + 1]),
            h,
            c,
            batch.weights,
        )
        if n_later:
            later_index = to_device(chunks.later, device)
            start_h = start_h.index_copy(0, later_index, h_b[:n_later])
            start_c = start_c.index_copy(0, later_index, c_b[:n_later])
        chunk_inputs = gather_steps(model_sequences, chunks.chunk_key, chunks.positions)
        # Keys shorter than a chunk keep their stored state: their window starts where they did.
        if folded.size == h.shape[0]:
            return chunk_inputs, (start_h, start_c), (h_b[n_later:], c_b[n_later:])
        new_state = (h, c)
        if folded.size:
            folded_index = to_device(folded, device)
            new_state = (
                h.index_copy(0, folded_index, h_b[n_later:]),
                c.index_copy(0, folded_index, c_b[n_later:]),
            )
        # A key of exactly one chunk takes its one step here: in the boundary run it would lengthen
        # the run of every key to the longest sequence of the batch.
        one_chunk = long_rows[~spans_chunks]
        if one_chunk.size:
            new_state = self._step_rows(sequences, one_chunk, long_steps[~spans_chunks], new_state, batch)
        return chunk_inputs, (start_h, start_c), new_state

    def _step_rows(
        self,
        sequences: torch.Tensor,
        rows: np.ndarray,
        steps: np.ndarray,
        state: tuple[torch.Tensor, torch.Tensor],
        batch: BatchInputs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``state`` (one row per key) with the keys ``rows`` advanced one LSTM step, without
        gradients, over their input at ``steps`` of ``sequences``."""
        h, c = state
        row_index = to_device(rows, self._device)
        with torch.no_grad():
            h_step, c_step = torch.lstm_cell(
                narrow(gather_steps(sequences, rows, steps), batch.columns),
                (h.index_select(0, row_index), c.index_select(0, row_index)),
                *batch.weights,
            )
        return h.index_copy(0, row_index, h_step), c.index_copy(0, row_index, c_step)

    def _input_columns(self, used: np.ndarray) -> torch.Tensor | None:
        """The input columns the LSTM runs on this batch, given ``used``, the scaler columns in use
        (named features and the time gap); ``None``, all of them, unless this leaves out at least
        half (and only on the CPU).

        A column without a feature name is 0 in every input and every stored window, and so are
        the category buckets until the first category comes (``_category_inputs_used``): leaving
        them out of the LSTM changes nothing but the work, since a weight of an input that is 0
        contributes nothing and gets a zero gradient either way. Most streams name a few of
        ``max_features`` and many have no categories: at 3 features the input weight products
        shrink from 35 columns to 6: about +7-19% events/s at batches of 1,024-4,096 on a 2-core
        CPU. A GPU runs all columns on lanes that would idle, and would pay launches for the
        gathers, so it keeps them all, as does a learner whose imported key states hold values
        in columns it has no name for (see ``import_keys``).
        """
        # The previous label's inputs, the category buckets once they may hold values, and the
        # trend inputs of the named features.
        end = self.max_features + EXTRA_INPUTS
        if self._category_inputs_used:
            end += self.category_buckets
        trend = self._trend_columns(used[:-1])
        width = used.size + end - self.max_features - 1 + trend.size
        # Gathers cost calls: worth it only when they take out at least half the columns.
        if self._device.type != "cpu" or not self._narrow_inputs or 2 * width > self.input_size:
            return None
        extra = np.arange(self.max_features + 1, end)
        return to_device(np.concatenate([used, extra, trend]), self._device)

    def _weights_for(self, columns: torch.Tensor | None) -> list[torch.Tensor]:
        """The LSTM's weights for the input ``columns`` (all of them for ``None``); the input
        weights are a gather, through which gradients reach the full matrix."""
        if columns is None:
            return self._lstm_weights
        w_ih, *rest = self._lstm_weights
        return [w_ih.index_select(1, columns), *rest]

    def _label_tensors(self, label_values: np.ndarray) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The labels of the batch (NaN where an event has none) as a tensor, and the indices of
        the labelled events.

        Without labels both are ``None``; when every event is labelled the index is ``None`` too
        (the loss then takes all logits, without a gather).
        """
        values = label_values.astype(np.float32)
        known = ~np.isnan(values)
        device = self._device
        if known.all():
            return None, to_device(values, device)
        if not known.any():
            return None, None
        return to_device(np.flatnonzero(known), device), to_device(values[known], device)


def one_key_chunks(plan: ChunkPlan, k: int, window_steps: int) -> bool:
    """Whether ``plan`` is one key's, with a full window, whose chunk rows are all ``k`` steps long,
    consecutive, all after the sequence's first step, and end at the sequence's end, and whose next
    window is its last ``window_steps`` inputs (what :meth:`ChunkedForward._forward_one_key`
    takes as slices)."""
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


#: Where each event's output is in the outputs of a run over chunk rows: the step of every row's
#: one event (an int), each event's flat index into the rows' steps (a tensor), or ``None`` when
#: the events are every step of every row, in order.
EventPick = int | torch.Tensor | None


def pick_outputs(outputs: torch.Tensor, pick: EventPick) -> torch.Tensor:
    """Each event's output (events x hidden) from ``outputs`` (rows x steps x hidden), by ``pick``."""
    if isinstance(pick, int):
        return outputs[:, pick]
    flat = outputs.reshape(-1, outputs.shape[-1])
    return flat if pick is None else flat.index_select(0, pick)


def _pending(
    events: Sequence[Event],
    batch: BatchInputs,
    logits: torch.Tensor,
    new_state: tuple[torch.Tensor, torch.Tensor],
    new_window: tuple[torch.Tensor, np.ndarray],
) -> Pending:
    """The :class:`Pending` pass of ``logits``, with each key's next window start state, and its
    next window and that window's length."""
    probabilities, finite = _host_probabilities(logits)
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


def _host_probabilities(logits: torch.Tensor) -> tuple[np.ndarray, bool]:
    """The probabilities of ``logits`` on the host, and whether all were finite (non-finite ones
    are returned as 0.5)."""
    probabilities = torch.sigmoid(logits.detach()).cpu().numpy().astype(np.float64)
    # A sum of values in [0, 1] is finite unless one is NaN (the cheapest test: it runs per batch).
    finite = math.isfinite(probabilities[0] if probabilities.size == 1 else np.add.reduce(probabilities))
    if not finite:
        probabilities[~np.isfinite(probabilities)] = 0.5
    return probabilities, finite
