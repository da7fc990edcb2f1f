"""The torch calls that the forward pass is made of: fused LSTM runs, boundary states, the head.

Why calls of their own and not ``nn.LSTM``'s forward: a micro-batch is small, so per-call Python
checks and extra kernel launches cost as much as the arithmetic; these call the aten ops directly
and gather with one ``index_select`` each.
"""

from __future__ import annotations

import numpy as np
import torch

from stream_lstm.learner.network import LSTMNetwork
from stream_lstm.learner.transfer import to_device

# Up to this many sequences always run as one padded call (see FusedLSTMCalls._run_lstm); beyond
# it, only when padding at most doubles the steps run.
PADDED_CALL_MAX_ROWS = 512


class FusedLSTMCalls:
    """The fused torch calls (a base of the LSTM learner,
    :class:`~stream_lstm.learner.lstm_learner.LSTMLearner`).

    Methods, not functions, so that tests can count and replace them on one learner. They read
    the learner's ``network`` and ``hidden_size``.
    """

    network: LSTMNetwork
    hidden_size: int

    def _run_lstm(
        self,
        inputs: torch.Tensor,
        lengths: np.ndarray,
        state: tuple[torch.Tensor, torch.Tensor],
        weights: list[torch.Tensor],
    ) -> torch.Tensor:
        """Run the LSTM over padded sequences of the given lengths; return the outputs.

        ``state`` is ``(h, c)``, one row per sequence. Usually every row runs to the longest
        length in one fused call: the padding comes after a row's real steps, so it changes none
        of their outputs, and no loss is taken past a row's end, so no gradient flows through the
        padding either (its contributions are exact zeros). When many rows would mostly run
        padding (a large batch of new keys beside a few long sequences), rows run instead in a
        fused call per length (on the CPU: a GPU runs the padding on lanes that would idle anyway,
        and pays for every extra call in launches). Packed sequences would skip the padding, but
        they bypass the fast (oneDNN) kernel. Outputs past a row's length are meaningless.
        """
        h, c = state
        steps = inputs.shape[1]
        padded_steps = lengths.size * steps
        if (
            inputs.device.type == "cuda"  # padding is idle GPU lanes; each extra call costs launches
            or lengths.size <= PADDED_CALL_MAX_ROWS
            or padded_steps <= 2 * int(lengths.sum())
        ):
            return self._lstm_call(inputs, h, c, weights)[0]
        outputs = inputs.new_zeros(inputs.shape[0], steps, self.hidden_size)
        for length in np.unique(lengths).tolist():
            rows = to_device(np.flatnonzero(lengths == length), inputs.device)
            out = self._lstm_call(
                inputs.index_select(0, rows)[:, :length],
                h.index_select(0, rows),
                c.index_select(0, rows),
                weights,
            )[0]
            if length < steps:
                out = torch.nn.functional.pad(out, (0, 0, 0, steps - length))
            outputs = outputs.index_copy(0, rows, out)
        return outputs

    def _head(self, outputs: torch.Tensor) -> torch.Tensor:
        """One logit per row of LSTM outputs (the linear head without nn.Module's call overhead)."""
        head = self.network.head
        return torch.nn.functional.linear(outputs, head.weight, head.bias).squeeze(-1)

    def _lstm_call(
        self, inputs: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weights: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One fused LSTM call (nn.LSTM's forward without its per-call Python checks)."""
        outputs, h_n, c_n = torch.lstm(
            inputs,
            (h.unsqueeze(0), c.unsqueeze(0)),
            weights,
            True,
            1,
            0.0,
            self.network.training,
            False,
            True,
        )
        return outputs, h_n[0], c_n[0]

    @torch.no_grad()
    def _boundary_states(
        self,
        sequences: torch.Tensor,
        keys: np.ndarray,
        positions: np.ndarray,
        h: torch.Tensor,
        c: torch.Tensor,
        weights: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The LSTM state of key ``keys[i]`` just before input ``positions[i]`` of its sequence
        (``weights``: the LSTM's, for the input columns that ``sequences`` holds).

        One fused call over each key's whole prefix gives every ``h``; the fused kernel returns
        ``c`` only at the end, so ``c`` comes from the cell recurrence ``c_t = f_t c_(t-1) +
        i_t g_t`` with the gates recomputed from the known ``h`` (:func:`cell_states`). This
        replaces a call per chunk boundary, whose fixed cost dominates on the CPU.
        """
        unique_keys, key_row = _unique_rows(keys)
        steps = int(positions.max())
        key_index = to_device(unique_keys, sequences.device)
        inputs = sequences.index_select(0, key_index)[:, :steps]
        h0, c0 = h.index_select(0, key_index), c.index_select(0, key_index)
        outputs, _, _ = self._lstm_call(inputs, h0, c0, weights)
        w_ih, w_hh, b_ih, b_hh = weights
        previous_h = torch.cat([h0.unsqueeze(1), outputs[:, :-1]], dim=1)
        gates = torch.matmul(inputs, w_ih.t()) + torch.matmul(previous_h, w_hh.t()) + (b_ih + b_hh)
        size = self.hidden_size
        forget = torch.sigmoid(gates[..., size : 2 * size])
        added = torch.sigmoid(gates[..., :size]) * torch.tanh(gates[..., 2 * size : 3 * size])
        before = positions - 1
        return gather_steps(outputs, key_row, before), cell_states(forget, added, c0, key_row, before)


#: On the CPU, the cell recurrence of :func:`cell_states` runs as a loop over time steps (each a
#: few NumPy operations on every key at once) while the steps are at most this many times the
#: keys, and as a parallel scan beyond: the loop's cost grows with the steps, the scan's with
#: steps x keys.
HOST_LOOP_STEPS_PER_KEY = 128


def cell_states(
    forget: torch.Tensor, added: torch.Tensor, c0: torch.Tensor, key_row: np.ndarray, before: np.ndarray
) -> torch.Tensor:
    """The cell state ``c`` of key ``key_row[i]`` after its step ``before[i]``, where the state
    evolves as ``c_t = forget_t c_(t-1) + added_t`` from ``c0`` (``forget``, ``added``: keys x
    steps x hidden).

    On the CPU, for batches of few steps per key, a loop over the steps (on a 2-core CPU, 86 µs
    against the scan's 114 µs for one key and 64 steps, and 0.4 ms against 2.8 ms for 128 keys);
    otherwise, and always on a GPU (where a loop would be a launch per step), an inclusive
    Hillis-Steele scan of the affine maps ``c -> forget * c + added`` (products only, no division:
    stable), all steps at once.
    """
    n_keys, steps = forget.shape[0], forget.shape[1]
    if forget.device.type == "cpu" and steps <= HOST_LOOP_STEPS_PER_KEY * n_keys:
        cell = c0.numpy()
        cells = np.empty(forget.shape, dtype=cell.dtype)
        # Time-major views: each step's rows of every key, without copies.
        for step_forget, step_added, step_cell in zip(
            forget.numpy().swapaxes(0, 1), added.numpy().swapaxes(0, 1), cells.swapaxes(0, 1), strict=True
        ):
            cell = np.multiply(step_forget, cell, out=step_cell)
            cell += step_added
        return torch.from_numpy(cells[key_row, before])
    shift = 1
    while shift < steps:
        added = torch.cat(
            [added[:, :shift], torch.addcmul(added[:, shift:], forget[:, shift:], added[:, :-shift])], 1
        )
        forget = torch.cat([forget[:, :shift], forget[:, shift:] * forget[:, :-shift]], 1)
        shift *= 2
    c0_rows = c0.index_select(0, to_device(key_row, forget.device))
    return torch.addcmul(gather_steps(added, key_row, before), gather_steps(forget, key_row, before), c0_rows)


def _unique_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True)``, without its sort when every entry is the same key
    (a stream of one key: every batch)."""
    first = keys[0]
    if (keys == first).all():
        return keys[:1], np.zeros(keys.size, dtype=np.int64)
    return np.unique(keys, return_inverse=True)


def gather_steps(tensor: torch.Tensor, rows: np.ndarray, positions: np.ndarray) -> torch.Tensor:
    """``tensor[rows, positions]`` for a (rows, steps, features) tensor, as one ``index_select``.

    ``positions`` is one step per row (result: rows x features) or a matrix of steps per row
    (result: rows x steps x features). Plain advanced indexing costs several times more on the
    small tensors of a micro-batch.
    """
    n_steps, width = tensor.shape[1], tensor.shape[2]
    flat = rows.reshape((-1,) + (1,) * (positions.ndim - 1)) * n_steps + positions
    picked = tensor.reshape(-1, width).index_select(0, to_device(flat.reshape(-1), tensor.device))
    return picked.view(*positions.shape, width)


def narrow(inputs: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
    """``inputs`` (input vectors in the last dimension) restricted to ``columns`` (all for ``None``)."""
    return inputs if columns is None else inputs.index_select(-1, columns)
