"""The batched forward pass: every key of a micro-batch, its window then its new events, at once.

The batch is encoded on the host (:mod:`stream_lstm.learner.encoding`), its chunks are planned
in NumPy (:mod:`stream_lstm.learner.tbptt_plan`), and here the inputs go to the device and run
through the LSTM as the plan says. The result is kept as a
:class:`~stream_lstm.learner.pending.Pending` pass until the learner backpropagates its loss and
writes the keys' new states back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from stream_lstm.learner.batch_columns import group_by_slot, optional_floats
from stream_lstm.learner.batch_columns import keys as batch_keys
from stream_lstm.learner.batch_columns import labels as batch_labels
from stream_lstm.learner.encoding import EXTRA_INPUTS, InputEncoding
from stream_lstm.learner.fused_lstm import FusedLSTMCalls, gather_steps, narrow
from stream_lstm.learner.pending import BatchInputs, EventPick, Pending, Rerun, pending_pass, pick_outputs
from stream_lstm.learner.tbptt_plan import (
    ChunkPlan,
    FullWindowPlan,
    LaterChunks,
    NextWindow,
    PlanCache,
    one_key_chunks,
)
from stream_lstm.learner.transfer import to_device
from stream_lstm.messages.events import Event


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
        pending = pending_pass(events, batch, logits, (new_h0, new_c0), (chunks[:, 1:], new_window_len))
        if batch.targets is not None:
            pending.rerun = Rerun(model_chunks, h, c, None, pick)
        return pending

    def _takes_one_key_path(self, plan: ChunkPlan) -> bool:
        """:func:`~stream_lstm.learner.tbptt_plan.one_key_chunks` of ``plan``, worked out once per
        plan (the plan cache gives the same plan again for a batch of the same shape)."""
        if self._one_key_plan is None or self._one_key_plan[0] is not plan:
            self._one_key_plan = (plan, one_key_chunks(plan, self.tbptt_steps, self.keys.window_steps))
        return self._one_key_plan[1]

    def _forward_one_key(self, events: Sequence[Event], batch: BatchInputs, plan: ChunkPlan) -> Pending:
        """:meth:`_forward_chunked` for a batch of one key with a full window whose chunks all start
        after the sequence's first step (:func:`~stream_lstm.learner.tbptt_plan.one_key_chunks`; a
        stream of one key, batch after batch): the same tensors, as slices and views of its
        sequence rather than gathers. On the CPU only: there the kernels give the same numbers for
        a view as for a copy (a test holds the two paths equal bit for bit); a GPU's kernels may
        choose by alignment.

        The key's sequence is its window followed by its new events; its chunks are the sequence's
        last ``rows x k`` inputs, and its next window is its last ``k - 1``.
        """
        store = self.keys
        slot = int(batch.groups.slots[0])
        later = plan.later_chunks
        assert later is not None
        new_inputs = to_device(batch.inputs, self._device).unsqueeze(0)
        sequence = torch.cat([store.window[slot : slot + 1], new_inputs], 1)
        model_sequence = narrow(sequence, batch.columns)
        h, c = store.h0[slot : slot + 1], store.c0[slot : slot + 1]
        rows = later.chunk_key.size
        window = plan.next_window
        positions = np.concatenate([later.boundary_steps, window.long_steps + 1])
        h_b, c_b = self._boundary_states(
            model_sequence, np.zeros(positions.size, dtype=np.int64), positions, h, c, batch.weights
        )
        first = int(later.boundary_steps[0])
        model_inputs = model_sequence[0, first:].view(rows, self.tbptt_steps, -1)
        new_window = sequence[:, int(window.positions[0, 0]) :]
        return self._run_chunks(
            events, batch, plan, model_inputs, (h_b[:rows], c_b[:rows]), (h_b[rows:], c_b[rows:]), new_window
        )

    def _forward_chunked(self, events: Sequence[Event], batch: BatchInputs, plan: ChunkPlan) -> Pending:
        """The general path of :meth:`_forward`: every key's window and new events in a grid,
        cut into the chunks of ``plan``."""
        device = self._device
        store = self.keys
        columns = batch.columns
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
        new_window = gather_steps(sequences, np.arange(n_keys), window.positions)
        return self._run_chunks(events, batch, plan, model_inputs, chunk_state, new_state, new_window)

    def _run_chunks(
        self,
        events: Sequence[Event],
        batch: BatchInputs,
        plan: ChunkPlan,
        model_inputs: torch.Tensor,
        chunk_state: tuple[torch.Tensor, torch.Tensor],
        new_state: tuple[torch.Tensor, torch.Tensor],
        new_window: torch.Tensor,
    ) -> Pending:
        """The :class:`Pending` pass of ``plan``'s chunk rows (``model_inputs``, from
        ``chunk_state``): the fused run, with gradients when the batch has labels, each event's
        logit, and what another optimizer step runs again; ``new_state`` and ``new_window`` are
        the keys' next window start states and windows."""
        with torch.set_grad_enabled(batch.targets is not None):
            outputs = self._run_lstm(model_inputs, plan.chunk_len, chunk_state, batch.weights)
            pick = None if plan.event_outputs is None else to_device(plan.event_outputs, self._device)
            logits = self._head(pick_outputs(outputs, pick))
        window_len = plan.next_window.window_len
        pending = pending_pass(events, batch, logits, new_state, (new_window, window_len))
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
