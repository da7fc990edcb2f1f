"""The online LSTM classifier: per-key state, truncated BPTT, one optimizer step per micro-batch."""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stream_lstm.errors import ConfigError
from stream_lstm.learner.adam import FusedAdam
from stream_lstm.learner.batch_columns import (
    KeyGroups,
    carry_forward,
    feature_names,
    feature_values,
    group_by_slot,
    optional_floats,
    plain_feature_maps,
    timestamps,
)
from stream_lstm.learner.batch_columns import keys as batch_keys
from stream_lstm.learner.batch_columns import labels as batch_labels
from stream_lstm.learner.finite import count_non_finite, describe_count
from stream_lstm.learner.key_state import NO_LABEL, KeyStateStore
from stream_lstm.learner.network import LSTMNetwork
from stream_lstm.learner.placement import learners_kept_on_cpu
from stream_lstm.learner.scaler import RunningScaler
from stream_lstm.learner.transfer import to_device
from stream_lstm.messages.events import Event
from stream_lstm.models.protocols import TrainedModel

# Input vector layout: the scaled features, then the scaled log time gap, then the previous label
# as -1/+1 (0 when there is none) and a flag for "no previous label".
_EXTRA_INPUTS = 3
# torch's reduction enum value for "mean".
_MEAN = 1
# Up to this many sequences always run as one padded call (see LSTMLearner._run_lstm); beyond
# it, only when padding at most doubles the steps run.
PADDED_CALL_MAX_ROWS = 512
#: The reasons a batch's optimizer step is skipped, in the order they are checked.
SKIP_REASONS = ("non_finite_loss", "non_finite_gradient")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when a GPU is visible, else the CPU; anything else is used as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"unknown device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    return resolved


@dataclass
class _Pending:
    """The forward pass of a batch, kept until :meth:`LSTMLearner.learn_many` consumes it."""

    events: Sequence[Event]
    logits: torch.Tensor
    probabilities: np.ndarray
    slots: np.ndarray
    slot_index: torch.Tensor  # slots, on the device
    raw_features: np.ndarray  # the scaled columns only
    raw_columns: np.ndarray  # which those are
    new_h0: torch.Tensor
    new_c0: torch.Tensor
    new_window: torch.Tensor
    new_window_len: np.ndarray
    last_label: np.ndarray
    last_ts: np.ndarray
    label_index: torch.Tensor | None  # None with targets: every event is labelled
    targets: torch.Tensor | None
    finite: bool  # whether every probability came out finite


class LSTMLearner(TrainedModel):
    """An LSTM binary classifier that learns online from a stream of keyed events.

    Weights are shared; every key has its own recurrent state. Each micro-batch is handled in two
    calls: :meth:`predict_proba_many` runs one batched forward pass over every key in the batch
    (its stored window, then its new events in order) with the weights learned from earlier
    batches, and :meth:`learn_many` backpropagates the loss of the batch's labelled events
    through that same pass and takes one optimizer step. The prediction for an event therefore
    depends only on earlier events of its key and on earlier batches.

    Truncated BPTT: every key keeps its last ``tbptt_steps - 1`` inputs and the detached state at
    the start of that window. A batch's sequence for a key is that window followed by its new
    events; it is cut into chunks of ``tbptt_steps`` steps counted from its end, with the state
    detached between chunks, so no gradient flows through more than ``tbptt_steps`` steps, and
    the loss of a key's single new event reaches back exactly ``tbptt_steps`` steps.

    Parameters
    ----------
    hidden_size
        Size of the LSTM state.
    tbptt_steps
        The furthest a gradient flows back in time, in events of one key.
    learning_rate
        Adam's step size; 0 freezes the weights.
    clip_grad_norm
        Gradients are rescaled so that their global norm is at most this.
    input_clip
        Standardised inputs (features and the log time gap) are clipped to
        ``[-input_clip, input_clip]``, so that no accepted value, however far out, can saturate
        the LSTM or overflow its gradients (with ``adapt_scaler=False`` the raw values are clipped).
    max_keys
        How many keys keep a state; beyond it the least recently seen key is forgotten.
    max_features
        How many distinct feature names get an input: the first ones met, in order of first
        appearance; the values of later new names are dropped and counted (``features_dropped``),
        their names are not kept.
    adapt_scaler
        Whether the feature standardisation keeps learning; ``False`` leaves features unscaled.
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... Within
        :func:`stream_lstm.learner.placement.learners_on_cpu` it is checked and kept, but the tensors stay
        on the CPU (a learner built only to be handed to another process).
    seed
        Seed of the weight initialisation.

    Guards: a batch whose loss or gradient norm is not finite changes neither the weights nor
    Adam's state; it is counted by reason (:meth:`guard_stats`), and ``steps`` does not count it.

    Examples
    --------
    >>> learner = LSTMLearner(hidden_size=4, tbptt_steps=2, device="cpu")
    >>> batch = [Event(key="a", features={"x": 1.0}, label=1), Event(key="a", label=0)]
    >>> probabilities = learner.predict_proba_many(batch)
    >>> learner.learn_many(batch)
    >>> probabilities.shape, learner.events_learned, learner.steps
    ((2,), 2, 1)
    """

    #: A class default: learners unpickled from checkpoints written before it existed use it.
    input_clip = 10.0

    def __init__(
        self,
        *,
        hidden_size: int = 32,
        tbptt_steps: int = 8,
        learning_rate: float = 0.01,
        clip_grad_norm: float = 1.0,
        input_clip: float = 10.0,
        max_keys: int = 100_000,
        max_features: int = 32,
        adapt_scaler: bool = True,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        for name, value in (
            ("hidden_size", hidden_size),
            ("tbptt_steps", tbptt_steps),
            ("max_keys", max_keys),
            ("max_features", max_features),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not learning_rate >= 0:
            raise ConfigError(f"learning_rate must be >= 0, got {learning_rate!r}")
        if not clip_grad_norm > 0:
            raise ConfigError(f"clip_grad_norm must be > 0, got {clip_grad_norm!r}")
        if not (isinstance(input_clip, (int, float)) and 0 < input_clip < math.inf):
            raise ConfigError(f"input_clip must be a finite number > 0, got {input_clip!r}")
        self.hidden_size = hidden_size
        self.tbptt_steps = tbptt_steps
        self.learning_rate = learning_rate
        self.clip_grad_norm = clip_grad_norm
        self.input_clip = float(input_clip)
        self.max_keys = max_keys
        self.max_features = max_features
        self.adapt_scaler = adapt_scaler
        self.device = device
        self.seed = seed
        self._build()

    def _build(self) -> None:
        device = resolve_device(self.device)  # checked even where the tensors stay on the CPU
        self._device = torch.device("cpu") if learners_kept_on_cpu() else device
        self.input_size = self.max_features + _EXTRA_INPUTS
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.network = LSTMNetwork(self.input_size, self.hidden_size).to(self._device)
        self._parameters = list(self.network.parameters())
        lstm = self.network.lstm
        self._lstm_weights = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
        self.optimizer = FusedAdam(self._parameters, lr=self.learning_rate)
        self.keys = self._new_key_store()
        # The log time gap is standardised like a feature, in the last scaler column.
        self.scaler = RunningScaler(self.max_features + 1)
        self.feature_columns: dict[str, int] = {}
        #: Feature values dropped because their name came after the first ``max_features``.
        self.features_dropped = 0
        self.events_seen = 0
        self.events_learned = 0
        # Batches handed to the optimizer, skipped ones included (see the steps property).
        self._steps_tried = 0
        # Skipped steps by reason (SKIP_REASONS): counted here where the check runs on the host,
        # and on the device where it does not (one count per reason, read only by guard_stats and
        # steps: a read would wait for the device).
        self._skipped = [0, 0]
        self._skipped_on_device: torch.Tensor | None = None
        # The CPU reads the loss and the gradient norm anyway; a GPU must not wait for them.
        # Tests switch it off to run the device's way on the CPU.
        self._check_on_host = self._device.type == "cpu"
        # Kept as tensors: reading them would synchronise with the device every batch.
        self._last_loss: torch.Tensor | None = None
        self._last_grad_norm: torch.Tensor | None = None
        self._pending: _Pending | None = None
        # Tests switch the steady-state path off to compare it with the general chunked one.
        self._full_window_path = True
        # Off once imported key states hold inputs in columns without a name (see import_keys).
        self._narrow_inputs = True

    def _new_key_store(self) -> KeyStateStore:
        return KeyStateStore(
            max_keys=self.max_keys,
            hidden_size=self.hidden_size,
            window_steps=max(self.tbptt_steps - 1, 1),
            input_size=self.input_size,
            device=self._device,
        )

    @property
    def torch_device(self) -> torch.device:
        """The device the weights and key states live on."""
        return self._device

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments, by name."""
        return {
            "hidden_size": self.hidden_size,
            "tbptt_steps": self.tbptt_steps,
            "learning_rate": self.learning_rate,
            "clip_grad_norm": self.clip_grad_norm,
            "input_clip": self.input_clip,
            "max_keys": self.max_keys,
            "max_features": self.max_features,
            "adapt_scaler": self.adapt_scaler,
            "device": self.device,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ predict and learn

    def predict_proba_many(self, events: Sequence[Event]) -> np.ndarray:
        """Probability that each event's label is 1, from earlier events and earlier batches only.

        Keeps the forward pass so that :meth:`learn_many` on the same batch can reuse it.
        """
        if not events:
            return np.zeros(0)
        self._pending = self._forward(events)
        return self._pending.probabilities

    def learn_many(self, events: Sequence[Event]) -> None:
        """Advance every key past ``events`` and take one optimizer step on their labels.

        The step is skipped, and counted (:meth:`guard_stats`), when the loss or the gradient
        norm is not finite; the key states written are then made finite (non-finite values: 0).
        ``events_learned`` counts the labelled events of skipped batches too.
        """
        if not events:
            return
        pending = self._pending
        if pending is None or pending.events is not events:
            pending = self._forward(events)
        self._pending = None
        # A forward pass that came out non-finite leaves states that must not be kept as they are.
        unsafe_states = not pending.finite
        if pending.targets is not None:
            logits = pending.logits
            if pending.label_index is not None:
                logits = logits.index_select(0, pending.label_index)
            # The aten op itself: the functional wrapper's checks cost more than the op here.
            loss = torch.binary_cross_entropy_with_logits(logits, pending.targets, None, None, _MEAN)
            self._steps_tried += 1
            self.events_learned += pending.targets.numel()
            self._last_loss = loss_value = loss.detach()
            if self._check_on_host:
                unsafe_states |= self._step_checked_on_host(loss, float(loss_value))
            else:
                self._step_checked_on_device(loss)
                unsafe_states = True  # whether it was skipped is not known here: no waiting
        new_h0, new_c0, new_window = pending.new_h0, pending.new_c0, pending.new_window
        if unsafe_states:
            new_h0, new_c0, new_window = map(_finite_or_zero, (new_h0, new_c0, new_window))
        store = self.keys
        slot_index = pending.slot_index
        store.h0.index_copy_(0, slot_index, new_h0)
        store.c0.index_copy_(0, slot_index, new_c0)
        store.window.index_copy_(0, slot_index, new_window)
        store.window_len[pending.slots] = pending.new_window_len
        store.prev_label[pending.slots] = pending.last_label
        store.last_ts[pending.slots] = pending.last_ts
        if self.adapt_scaler:
            self.scaler.update(pending.raw_features, pending.raw_columns)
        self.events_seen += len(events)

    def _step_checked_on_host(self, loss: torch.Tensor, value: float) -> bool:
        """Backpropagate ``loss`` (whose value is ``value``) and take the optimizer step, unless
        the loss or the gradient norm is not finite; return whether the step was skipped."""
        if not math.isfinite(value):
            self._skipped[0] += 1
            self._last_grad_norm = None  # no gradient was computed
            return True
        for parameter in self._parameters:
            parameter.grad = None
        loss.backward()
        self._last_grad_norm, total = self._clip_gradients()
        if not math.isfinite(total):  # type: ignore[arg-type]
            self._skipped[1] += 1
            return True
        self.optimizer.step()
        return False

    def _step_checked_on_device(self, loss: torch.Tensor) -> None:
        """:meth:`_step_checked_on_host` without reading anything back: the checks are a flag
        on the device, which the fused Adam kernel reads (``found_inf``: when it is 1 the kernel
        leaves the weights and the averages alone, and the step counts are put back)."""
        for parameter in self._parameters:
            parameter.grad = None
        loss.backward()
        norm, _ = self._clip_gradients()
        self._last_grad_norm = norm
        bad = torch.isfinite(torch.stack([loss.detach(), norm])).logical_not_().float()
        # [loss not finite, loss or gradient not finite]: a step is counted under its first
        # failing check; the second count less the first is the gradient's.
        flags = bad.cumsum_(0).clamp_(max=1.0)
        if self._skipped_on_device is None:
            self._skipped_on_device = torch.zeros(2, dtype=torch.float64, device=self._device)
        self._skipped_on_device.add_(flags)
        self.optimizer.step(found_inf=flags[1])

    def _clip_gradients(self) -> tuple[torch.Tensor, float | None]:
        """Scale the gradients to a global norm of at most ``clip_grad_norm``; return the norm,
        and on the host path also its value (``None`` on the device path).

        The same as ``torch.nn.utils.clip_grad_norm_`` in a few fused calls, without reading the
        norm back to the host on a GPU.
        """
        grads = [p.grad for p in self._parameters if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if self._check_on_host:
            # Reading the norm costs nothing on the CPU, and most steps need no scaling at all.
            total = float(norm)
            if self.clip_grad_norm < total < math.inf:
                torch._foreach_mul_(grads, self.clip_grad_norm / (total + 1e-6))
            return norm, total
        torch._foreach_mul_(grads, torch.clamp(self.clip_grad_norm / (norm + 1e-6), max=1.0))
        return norm, None

    @property
    def steps(self) -> int:
        """Optimizer steps taken (skipped ones not counted). On a GPU, reading it waits for the
        device to finish the steps queued so far."""
        return self._steps_tried - sum(self._skip_counts())

    def _skip_counts(self) -> list[int]:
        """Skipped steps per reason (SKIP_REASONS), since the learner was built or loaded."""
        counts = list(self._skipped)
        if self._skipped_on_device is not None:
            loss, either = (int(value) for value in self._skipped_on_device.tolist())
            counts[0] += loss
            counts[1] += either - loss
        return counts

    def guard_stats(self) -> dict[str, int]:
        """What the learner's guards left out, cumulative (kept in checkpoints): optimizer steps
        skipped for a non-finite loss or gradient norm, and feature values dropped for names past
        ``max_features``. On a GPU it reads two counts from the device."""
        loss, gradient = self._skip_counts()
        return {
            "skipped_non_finite_loss": loss,
            "skipped_non_finite_gradient": gradient,
            "features_dropped": self.features_dropped,
        }

    def non_finite_parts(self) -> list[str]:
        """The parts of the learner's state that hold non-finite values (empty when none does):
        weights, Adam's averages and step counts, scaler statistics, key states (a NaN ``last_ts``
        means "no timestamp" and is fine; an infinite one is not). A checkpoint holding any is
        refused (:mod:`stream_lstm.state.finite_check`)."""
        parts = []

        def check(what: str, value: Any, *, nan_allowed: bool = False) -> None:
            bad = count_non_finite(value, nan_allowed=nan_allowed)
            if bad:
                total = value.size if isinstance(value, np.ndarray) else value.numel()
                parts.append(describe_count(what, bad, total, "infinite" if nan_allowed else "not finite"))

        with torch.no_grad():
            for name, parameter in self.network.named_parameters():
                check(f"weight {name}", parameter)
            for index, state in self.optimizer.state_dict()["state"].items():
                for name, value in state.items():
                    check(f"optimizer {name} of parameter {index}", torch.as_tensor(value))
            for name in ("count", "mean", "m2"):
                check(f"scaler {name}", getattr(self.scaler, name))
            for name in ("h0", "c0", "window"):
                check(f"key state {name}", getattr(self.keys, name))
            check("key state last_ts", self.keys.last_ts, nan_allowed=True)
        return parts

    def key_stats(self) -> dict[str, int]:
        """How many keys hold a state now, and how many were evicted so far (LRU)."""
        return {"tracked": len(self.keys), "evicted": self.keys.evictions}

    def device_memory_bytes(self) -> int:
        """GPU memory torch holds on this learner's device (0 on the CPU)."""
        if self._device.type != "cuda":
            return 0
        return int(torch.cuda.memory_allocated(self._device))

    def training_stats(self) -> dict[str, float]:
        """The last batch's training loss and gradient norm (NaN before the first step)."""
        loss, norm = self._last_loss, self._last_grad_norm
        return {
            "loss": float(loss) if loss is not None else math.nan,
            "grad_norm": float(norm) if norm is not None else math.nan,
        }

    # ------------------------------------------------------------------ the batched forward pass

    def _forward(self, events: Sequence[Event]) -> _Pending:
        groups = group_by_slot(self.keys.lookup(batch_keys(events)))
        event_row, event_rank = groups.row, groups.rank
        counts = groups.counts
        slots = groups.slots
        label_values = optional_floats(batch_labels(events))  # NaN: no label
        raw, inputs, last_label, last_ts = self._encode(events, groups, slots, label_values)
        columns = self._input_columns(raw[1])
        label_index, targets = self._label_tensors(label_values)
        with torch.set_grad_enabled(targets is not None):
            weights = self._weights_for(columns)

        k = self.tbptt_steps
        window_steps = self.keys.window_steps
        n_keys = len(counts)
        window_len = self.keys.window_len[slots]
        total_len = window_len + counts
        device = self._device
        slot_index = to_device(slots, device)
        if self._full_window_path and k > 1 and int(counts.max()) <= k and (window_len == window_steps).all():
            return self._forward_full_windows(
                events,
                slot_index,
                slots,
                raw,
                inputs,
                last_label,
                last_ts,
                (label_index, targets),
                (columns, weights),
                event_row,
                event_rank,
                counts,
            )

        seq_len = max(int(total_len.max(initial=0)), window_steps)
        sequences = torch.cat(
            [
                self.keys.window.index_select(0, slot_index),
                torch.zeros(n_keys, seq_len - window_steps, self.input_size, device=device),
            ],
            dim=1,
        )
        event_pos = window_len[event_row] + event_rank
        sequences.view(-1, self.input_size).index_copy_(
            0,
            to_device(event_row * seq_len + event_pos, device),
            to_device(inputs, device),
        )

        # Chunks are counted from the end of each sequence, so a key's last chunk holds its last
        # k inputs; the first chunk (chunk 0) may be shorter.
        n_chunks = (total_len + k - 1) // k
        first_len = total_len - (n_chunks - 1) * k
        after_first = event_pos - first_len[event_row]
        event_chunk = np.where(after_first < 0, 0, 1 + after_first // k)
        event_step = np.where(after_first < 0, event_pos, after_first % k)

        h = self.keys.h0[slot_index]
        c = self.keys.c0[slot_index]
        if int(n_chunks.max(initial=0)) <= 1:
            # The usual case: one chunk per key, starting at position 0 from the stored state.
            chunk_inputs = sequences[:, : int(total_len.max(initial=1))]
            chunk_len = total_len
            chunk_state = (h, c)
            event_chunk_row = event_row
            new_h0, new_c0 = h, c
        else:
            # Only chunks that hold a new event need to run with gradients: those from the chunk of
            # each key's first new event to its last chunk.
            first_new = np.where(window_len < first_len, 0, 1 + (window_len - first_len) // k)
            per_key = n_chunks - first_new
            row_of_key = np.concatenate([[0], np.cumsum(per_key)[:-1]])
            chunk_key = np.repeat(np.arange(n_keys), per_key)
            chunk_j = np.arange(chunk_key.size) - row_of_key[chunk_key] + first_new[chunk_key]
            chunk_start = np.where(chunk_j == 0, 0, first_len[chunk_key] + (chunk_j - 1) * k)
            chunk_len = np.where(chunk_j == 0, first_len[chunk_key], k)
            key_index = to_device(chunk_key, device)
            start_h, start_c = h.index_select(0, key_index), c.index_select(0, key_index)
            # A chunk after chunk 0 starts from the state at its boundary (see _boundary_states).
            later = np.flatnonzero(chunk_j > 0)
            if later.size:
                later_index = to_device(later, device)
                h_b, c_b = self._boundary_states(
                    _narrow(sequences, columns), chunk_key[later], chunk_start[later], h, c, weights
                )
                start_h = start_h.index_copy(0, later_index, h_b)
                start_c = start_c.index_copy(0, later_index, c_b)
            steps = int(chunk_len.max())
            positions = np.minimum(chunk_start[:, None] + np.arange(steps), seq_len - 1)
            chunk_inputs = _gather_steps(sequences, chunk_key, positions)
            chunk_state = (start_h, start_c)
            event_chunk_row = row_of_key[event_row] + event_chunk - first_new[event_row]
            last_rows = to_device(row_of_key + per_key - 1, device)
            new_h0, new_c0 = start_h.index_select(0, last_rows), start_c.index_select(0, last_rows)

        with torch.set_grad_enabled(targets is not None):
            outputs = self._run_lstm(_narrow(chunk_inputs, columns), chunk_len, chunk_state, weights)
            picked = _gather_steps(outputs, event_chunk_row, event_step)
            logits = self._head(picked)
        probabilities, finite = _host_probabilities(logits)

        # The next window is the last k - 1 inputs; its start state is one step into the last
        # chunk, which the fused LSTM does not return, so take that one step again here.
        long_rows = np.flatnonzero(total_len >= k)
        if long_rows.size:
            long_index = to_device(long_rows, device)
            with torch.no_grad():
                h_step, c_step = torch.lstm_cell(
                    _narrow(_gather_steps(sequences, long_rows, total_len[long_rows] - k), columns),
                    (new_h0.index_select(0, long_index), new_c0.index_select(0, long_index)),
                    *weights,
                )
            new_h0 = new_h0.index_copy(0, long_index, h_step)
            new_c0 = new_c0.index_copy(0, long_index, c_step)
        new_window_len = np.minimum(total_len, k - 1)
        window_positions = np.minimum(
            (total_len - new_window_len)[:, None] + np.arange(window_steps)[None, :], seq_len - 1
        )
        new_window = _gather_steps(sequences, np.arange(n_keys), window_positions)
        return _Pending(
            events=events,
            logits=logits,
            probabilities=probabilities,
            finite=finite,
            slots=slots,
            slot_index=slot_index,
            raw_features=raw[0],
            raw_columns=raw[1],
            new_h0=new_h0,
            new_c0=new_c0,
            new_window=new_window,
            new_window_len=new_window_len,
            last_label=last_label,
            last_ts=last_ts,
            label_index=label_index,
            targets=targets,
        )

    def _forward_full_windows(
        self,
        events: Sequence[Event],
        slot_index: torch.Tensor,
        slots: np.ndarray,
        raw: tuple[np.ndarray, np.ndarray],
        inputs: np.ndarray,
        last_label: np.ndarray,
        last_ts: np.ndarray,
        labels: tuple[torch.Tensor | None, torch.Tensor | None],
        model_inputs: tuple[torch.Tensor | None, list[torch.Tensor]],
        event_row: np.ndarray,
        event_rank: np.ndarray,
        counts: np.ndarray,
    ) -> _Pending:
        """The steady state of :meth:`_forward`, in far fewer operations.

        Every key of the batch has a full window (``k - 1`` inputs) and ``m <= k`` new events, so
        its sequence of ``k - 1 + m`` inputs splits, from the end, into a first chunk of ``m - 1``
        window inputs and a last chunk of exactly ``k`` inputs that holds every new event. Only the
        last chunks run with gradients, all keys in one fused call: each starts from the key's
        state advanced ``m - 1`` steps without gradients (no steps at all in the commonest case,
        ``m = 1``). A key's next window is its last chunk without its first input.
        """
        device = self._device
        k = self.tbptt_steps
        label_index, targets = labels
        columns, weights = model_inputs
        window = self.keys.window.index_select(0, slot_index)
        h, c = self.keys.h0.index_select(0, slot_index), self.keys.c0.index_select(0, slot_index)
        new_inputs = to_device(inputs, device)
        most = int(counts.max())
        if most == 1:
            chunks = torch.cat([window, new_inputs.unsqueeze(1)], 1)
            event_step: np.ndarray | int = k - 1
        else:
            window_steps = k - 1
            seq_len = window_steps + most
            sequences = torch.cat([window, window.new_zeros(len(counts), most, self.input_size)], 1)
            sequences.view(-1, self.input_size).index_copy_(
                0, to_device(event_row * seq_len + window_steps + event_rank, device), new_inputs
            )
            skipped = counts - 1  # window inputs before the last chunk
            chunks = _gather_steps(sequences, np.arange(len(counts)), skipped[:, None] + np.arange(k))
            with torch.no_grad():
                for step in range(most - 1):
                    rows = np.flatnonzero(skipped > step)
                    row_index = to_device(rows, device)
                    h_step, c_step = torch.lstm_cell(
                        _narrow(_gather_steps(sequences, rows, np.full(rows.size, step)), columns),
                        (h.index_select(0, row_index), c.index_select(0, row_index)),
                        *weights,
                    )
                    h, c = h.index_copy(0, row_index, h_step), c.index_copy(0, row_index, c_step)
            event_step = k - 1 - skipped[event_row] + event_rank
        model_chunks = _narrow(chunks, columns)
        with torch.set_grad_enabled(targets is not None):
            outputs, _, _ = self._lstm_call(model_chunks, h, c, weights)
            if isinstance(event_step, int):
                picked = outputs[:, event_step]
            else:
                picked = _gather_steps(outputs, event_row, event_step)
            logits = self._head(picked)
        with torch.no_grad():
            new_h0, new_c0 = torch.lstm_cell(model_chunks[:, 0], (h, c), *weights)
        probabilities, finite = _host_probabilities(logits)
        return _Pending(
            events=events,
            logits=logits,
            probabilities=probabilities,
            finite=finite,
            slots=slots,
            slot_index=slot_index,
            raw_features=raw[0],
            raw_columns=raw[1],
            new_h0=new_h0,
            new_c0=new_c0,
            new_window=chunks[:, 1:],
            new_window_len=np.full(len(counts), self.keys.window_steps, dtype=np.int64),
            last_label=last_label,
            last_ts=last_ts,
            label_index=label_index,
            targets=targets,
        )

    def _input_columns(self, used: np.ndarray) -> torch.Tensor | None:
        """The input columns the LSTM runs on this batch, given ``used``, the scaler columns in use
        (named features and the time gap); ``None``, all of them, unless this leaves out at least
        half (and only on the CPU).

        A column without a feature name is 0 in every input and every stored window, so leaving
        it out of the LSTM changes nothing but the work: its input weights get a zero gradient
        either way, and Adam never moves a weight whose gradient was always zero. Most streams
        name a few of ``max_features``: at 3 features the input weight products shrink from 35
        columns to 6: about +7-19% events/s at batches of 1,024-4,096 on a 2-core CPU. A GPU runs
        the 35 columns on lanes that would idle, and would pay launches for the gathers, so it
        keeps them all, as does a learner whose imported key states hold values in columns it has
        no name for (see :meth:`import_keys`).
        """
        width = used.size + _EXTRA_INPUTS - 1
        # Gathers cost calls: worth it only when they take out at least half the columns.
        if self._device.type != "cpu" or not self._narrow_inputs or 2 * width > self.input_size:
            return None
        extra = np.arange(self.max_features + 1, self.input_size)  # the previous label's inputs
        return to_device(np.concatenate([used, extra]), self._device)

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
        i_t g_t`` with the gates recomputed from the known ``h``, evaluated for all steps at once
        as a parallel scan of affine maps (products only, no division: stable). This replaces a
        call per chunk boundary, whose fixed cost dominates on the CPU.
        """
        unique_keys, key_row = np.unique(keys, return_inverse=True)
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
        # Inclusive scan (Hillis-Steele) of the maps c -> forget * c + added along time.
        shift = 1
        while shift < steps:
            added = torch.cat(
                [added[:, :shift], torch.addcmul(added[:, shift:], forget[:, shift:], added[:, :-shift])], 1
            )
            forget = torch.cat([forget[:, :shift], forget[:, shift:] * forget[:, :-shift]], 1)
            shift *= 2
        before = positions - 1
        c0_rows = c0.index_select(0, to_device(key_row, sequences.device))
        c_all = torch.addcmul(
            _gather_steps(added, key_row, before), _gather_steps(forget, key_row, before), c0_rows
        )
        return _gather_steps(outputs, key_row, before), c_all

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

    def _encode(
        self, events: Sequence[Event], groups: KeyGroups, slots: np.ndarray, label_values: np.ndarray
    ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """Build the batch's input vectors on the host (``label_values``: each event's label, NaN
        where it has none).

        Returns the raw values of the columns that can hold any and which columns those are
        (for the scaler update), the inputs, and each key's last label and timestamp after the
        batch.
        """
        n_features = self.max_features
        raw = np.full((len(events), n_features + 1), np.nan)
        self._fill_features(events, raw)
        prev_label, last_label = carry_forward(
            label_values, np.isnan(label_values), groups, self.keys.prev_label[slots].astype(np.float64)
        )
        ts = timestamps(events)
        prev_ts, last_ts = carry_forward(ts, np.isnan(ts), groups, self.keys.last_ts[slots])
        # NaN (no gap) where the event or its key's earlier events have no timestamp.
        raw[:, n_features] = np.log1p(np.maximum(ts - prev_ts, 0.0))
        inputs = np.zeros((len(events), self.input_size), dtype=np.float32)
        # Only columns with a feature name (and the time gap) can hold values: the rest scale to 0.
        used = np.array([*sorted(self.feature_columns.values()), n_features], dtype=np.int64)
        raw = raw[:, used]
        inputs[:, used] = self.scaler.transform(raw, used, clip=self.input_clip)
        has_label = prev_label != NO_LABEL
        inputs[:, n_features + 1] = np.where(has_label, 2.0 * prev_label - 1.0, 0.0)
        inputs[:, n_features + 2] = ~has_label
        return (raw, used), inputs, last_label.astype(np.int8), last_ts

    def _fill_features(self, events: Sequence[Event], raw: np.ndarray) -> None:
        """Write each event's features into its row of ``raw``, in their columns (new names get a
        column while there is one free)."""
        columns = self.feature_columns
        maps = plain_feature_maps(events)
        if maps is not None:
            names = feature_names(maps)
            if len(columns) >= self.max_features or names <= columns.keys():
                # The usual batch, with no new names (or no column left for one: any name without
                # a column is dropped): a column at a time.
                for name in names:
                    column = columns.get(name)
                    if column is not None:
                        raw[:, column] = feature_values(maps, name)
                    else:
                        self.features_dropped += sum(map(dict.__contains__, maps, itertools.repeat(name)))
                return
        # New names take the lowest free columns in order of first appearance.
        for i, event in enumerate(events):
            for name, value in event.features.items():
                column = columns.get(name)
                if column is None:
                    column = self._add_feature(name)
                    if column is None:
                        self.features_dropped += 1
                        continue
                raw[i, column] = value

    def _add_feature(self, name: str) -> int | None:
        if len(self.feature_columns) >= self.max_features:
            return None
        # The lowest free column (imported key states may have taken some out of order).
        used = set(self.feature_columns.values())
        column = next(c for c in range(self.max_features) if c not in used)
        self.feature_columns[name] = column
        return column

    # ------------------------------------------------------------------ per-key state

    def tracked_keys(self) -> Collection[str]:
        """The keys that hold a state now."""
        return self.keys.tracked()

    def export_keys(self, keys: Sequence[str]) -> dict[str, Any]:
        """The recurrent state and window of those of ``keys`` that are tracked (CPU tensors).

        With :meth:`import_keys` this moves keys between learners (a Kafka partition changing
        owner): the receiver continues them exactly where this learner left them.
        """
        self._check_no_pending()
        return {**self.keys.export(keys), "feature_columns": dict(self.feature_columns)}

    def import_keys(self, state: dict[str, Any]) -> None:
        """Continue the keys of an :meth:`export_keys`, replacing their current state.

        The stored windows are input vectors in the exporter's feature layout: features this
        learner has not met yet take the exporter's columns; a feature that sits in different
        columns in the two learners makes the windows unreadable (:class:`ConfigError`). States
        without their layout (older versions) whose windows hold values in columns this learner
        has no name for make it run the LSTM on every input column from then on.
        """
        self._check_no_pending()
        theirs: dict[str, int] = state.get("feature_columns", {})
        taken = {column: name for name, column in self.feature_columns.items()}
        clashes = [
            name
            for name, column in theirs.items()
            if self.feature_columns.get(name, column) != column
            or (name not in self.feature_columns and taken.get(column, name) != name)
        ]
        if clashes:
            raise ConfigError(
                f"key states were saved with another feature layout (features {sorted(clashes)[:5]} "
                "sit in other input columns); they cannot be continued by this learner"
            )
        self.keys.import_(state)
        for name, column in theirs.items():
            self.feature_columns.setdefault(name, column)
        if state["keys"] and self._windows_use_unnamed_columns(state["window"]):
            self._narrow_inputs = False  # see _input_columns

    def _windows_use_unnamed_columns(self, windows: torch.Tensor) -> bool:
        """Whether stored input ``windows`` hold a value in a feature column without a name (key
        states of a version that did not record its layout)."""
        unnamed = torch.ones(self.max_features, dtype=torch.bool)
        unnamed[[c for c in self.feature_columns.values() if 0 <= c < self.max_features]] = False
        used = torch.zeros(self.max_features, dtype=torch.bool)
        for start in range(0, windows.shape[0], 65_536):  # bounded temporaries on large stores
            rows = windows[start : start + 65_536, :, : self.max_features]
            used |= rows.ne(0).any(dim=0).any(dim=0).cpu()
        return bool((used & unnamed).any())

    def forget_keys(self, keys: Sequence[str]) -> None:
        """Drop the state of ``keys``: they restart from a zero state if they come back."""
        self._check_no_pending()
        self.keys.forget(keys)

    def detach_keys(self) -> KeyStateStore:
        """Take out every key's state, leaving none tracked; :meth:`attach_keys` puts it back.

        Lets the weights be saved without the key states, which are saved per partition.
        """
        self._check_no_pending()
        store, self.keys = self.keys, self._new_key_store()
        return store

    def attach_keys(self, store: KeyStateStore) -> None:
        """Put back what :meth:`detach_keys` took out."""
        self.keys = store

    def _check_no_pending(self) -> None:
        if self._pending is not None:
            raise RuntimeError("key states cannot change between predict_proba_many and learn_many")

    # ------------------------------------------------------------------ persistence

    def __getstate__(self) -> dict[str, Any]:
        if self._pending is not None:
            raise RuntimeError("cannot save between predict_proba_many and learn_many")
        buffer = io.BytesIO()
        torch.save(
            {
                "network": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "keys": self.keys.state_dict(),
                "last_loss": self._last_loss,
                "last_grad_norm": self._last_grad_norm,
            },
            buffer,
        )
        return {
            "hyperparameters": self.hyperparameters(),
            "torch_state": buffer.getvalue(),
            "scaler": self.scaler,
            "feature_columns": dict(self.feature_columns),
            "features_dropped": self.features_dropped,
            "events_seen": self.events_seen,
            "events_learned": self.events_learned,
            "steps": self.steps,
            **dict(zip([f"skipped_{reason}" for reason in SKIP_REASONS], self._skip_counts(), strict=True)),
            "narrow_inputs": self._narrow_inputs,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state["hyperparameters"].items():
            setattr(self, name, value)
        self._build()
        saved = torch.load(io.BytesIO(state["torch_state"]), map_location=self._device, weights_only=False)
        self.network.load_state_dict(saved["network"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.keys.load_state_dict(saved["keys"])
        self._last_loss = saved["last_loss"]
        self._last_grad_norm = saved["last_grad_norm"]
        self.scaler = state["scaler"]
        self.feature_columns = state["feature_columns"]
        # Older checkpoints kept the dropped names ("dropped_features"), not a count of values.
        self.features_dropped = state.get("features_dropped", 0)
        self.events_seen = state["events_seen"]
        self.events_learned = state["events_learned"]
        self._skipped = [state.get(f"skipped_{reason}", 0) for reason in SKIP_REASONS]
        self._steps_tried = state["steps"] + sum(self._skipped)
        # Absent in older checkpoints, whose key states may have come without their layout.
        narrow = state.get("narrow_inputs")
        if narrow is None:
            narrow = not self._windows_use_unnamed_columns(self.keys.window)
        self._narrow_inputs = narrow


def _host_probabilities(logits: torch.Tensor) -> tuple[np.ndarray, bool]:
    """The probabilities of ``logits`` on the host, and whether all were finite (non-finite ones
    are returned as 0.5)."""
    probabilities = torch.sigmoid(logits.detach()).cpu().numpy().astype(np.float64)
    # A sum of values in [0, 1] is finite unless one is NaN (the cheapest test: it runs per batch).
    finite = math.isfinite(probabilities[0] if probabilities.size == 1 else np.add.reduce(probabilities))
    if not finite:
        probabilities[~np.isfinite(probabilities)] = 0.5
    return probabilities, finite


def _finite_or_zero(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with its non-finite values replaced by 0."""
    return torch.nan_to_num(tensor, nan=0.0, posinf=0.0, neginf=0.0)


def _narrow(inputs: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
    """``inputs`` (input vectors in the last dimension) restricted to ``columns`` (all for ``None``)."""
    return inputs if columns is None else inputs.index_select(-1, columns)


def _gather_steps(tensor: torch.Tensor, rows: np.ndarray, positions: np.ndarray) -> torch.Tensor:
    """``tensor[rows, positions]`` for a (rows, steps, features) tensor, as one ``index_select``.

    ``positions`` is one step per row (result: rows x features) or a matrix of steps per row
    (result: rows x steps x features). Plain advanced indexing costs several times more on the
    small tensors of a micro-batch.
    """
    n_steps, width = tensor.shape[1], tensor.shape[2]
    flat = rows.reshape((-1,) + (1,) * (positions.ndim - 1)) * n_steps + positions
    picked = tensor.reshape(-1, width).index_select(0, to_device(flat.reshape(-1), tensor.device))
    return picked.view(*positions.shape, width)
