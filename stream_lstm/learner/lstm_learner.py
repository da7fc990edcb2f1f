"""The online LSTM classifier: per-key state, truncated BPTT, optimizer steps per micro-batch.

The learner's jobs live in its bases, a module each: :mod:`~stream_lstm.learner.encoding` (events
to input vectors), :mod:`~stream_lstm.learner.tbptt_plan` (the chunks, planned in NumPy),
:mod:`~stream_lstm.learner.forward` and :mod:`~stream_lstm.learner.fused_lstm` (the torch forward
pass, kept as a :mod:`~stream_lstm.learner.pending` pass), :mod:`~stream_lstm.learner.training`
(backward, the guarded step and the guards' counts) and :mod:`~stream_lstm.learner.key_transfer`
(key states between learners). Bases rather than parts it
holds, so that the hot path makes no extra calls and a test can replace one method of one
learner. This module builds it and runs a batch through predict and learn;
:mod:`~stream_lstm.learner.learner_state` turns it into data and back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from stream_lstm.errors import ConfigError
from stream_lstm.learner.adam import FusedAdam
from stream_lstm.learner.base_rate import BaseRateAverage
from stream_lstm.learner.batch_columns import keys as batch_keys
from stream_lstm.learner.devices import resolve_device
from stream_lstm.learner.encoding import input_size, later_input_groups
from stream_lstm.learner.forward import ChunkedForward
from stream_lstm.learner.key_transfer import KeyTransfer
from stream_lstm.learner.learner_state import LearnerPersistence
from stream_lstm.learner.limits import (
    CHANGEABLE_SETTINGS,
    DEFAULT_BASE_RATE_ODDS,
    DEFAULT_EXTRA_STEP_EVENTS,
    DEFAULT_LR_BOOST_HALF_LIFE,
    check_base_rate_odds,
    check_extra_step_events,
    check_lr_boost_half_life,
    check_steps_per_batch,
)
from stream_lstm.learner.network import seeded_network
from stream_lstm.learner.pending import Pending
from stream_lstm.learner.placement import learners_kept_on_cpu
from stream_lstm.learner.scaler import RunningScaler
from stream_lstm.learner.tbptt_plan import ChunkPlan, PlanCache
from stream_lstm.learner.training import GuardedTraining, finite_or_zero
from stream_lstm.messages.categories import DEFAULT_CATEGORY_BUCKETS
from stream_lstm.messages.events import Event
from stream_lstm.messages.stream_rate import (
    DEFAULT_STREAM_RATE_HALF_LIFE,
    StreamRate,
    check_stream_rate_half_life,
)
from stream_lstm.messages.trend_scales import DEFAULT_TREND_SCALES, check_trend_scales, trend_rates
from stream_lstm.models.protocols import TrainedModel


class LSTMLearner(ChunkedForward, GuardedTraining, KeyTransfer, LearnerPersistence, TrainedModel):
    """An LSTM binary classifier that learns online from a stream of keyed events.

    Weights are shared; every key has its own recurrent state. Each micro-batch is handled in two
    calls: :meth:`predict_batch` runs one batched forward pass over every key in the batch
    (its stored window, then its new events in order) with the weights learned from earlier
    batches, and :meth:`learn_batch` backpropagates the loss of the batch's labelled events
    through that same pass and takes an optimizer step (``steps_per_batch`` of them, one more early
    in a stream: each after the batch's truncated chunks run again with the weights of the step
    before). The prediction
    for an event therefore depends only on earlier events of its key and on earlier batches.

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
    lr_boost_half_life
        The half-life, in optimizer steps, of an early boost to the step size: the first step
        takes twice ``learning_rate``, and the boost halves every this many steps
        (:class:`~stream_lstm.learner.adam.FusedAdam`); 0: none. It makes up for part of the
        steps a large micro-batch does not take in a stream's first few thousand events.
    clip_grad_norm
        Gradients are rescaled so that their global norm is at most this.
    steps_per_batch
        Optimizer steps on each batch's labels: more steps learn more per event seen (a batch of
        64 events otherwise gets one step where per-event learning takes 64), at the cost of a
        forward and backward pass each. The batch is predicted before the first, so the
        prequential rule holds whatever the number.
    extra_step_events
        A batch that starts while fewer than this many labelled events have been learned gets
        one optimizer step more than ``steps_per_batch``; 0: none. Early in a stream the network
        is far from trained and each step gains most, so the extra steps there buy more than a
        third step on every batch would (measured on the quality suite), and they cost nothing
        once the stream is past its start. Its clock is ``events_learned``, which checkpoints
        keep.
    base_rate_odds
        The prior log-odds, in nats, of the network against the base rate (the rate of positive
        labels so far): the predictions are the two models' Bayesian average
        (:mod:`stream_lstm.learner.base_rate`), the network's probabilities as they are wherever
        it beats the base rate, about the base rate on a stream without signal; 0: off.
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
    category_buckets
        How many inputs the event's categories (text values) get: each (name, value) pair adds 1 to
        the inputs of its two buckets (:func:`~stream_lstm.messages.categories.category_probes`), so
        any number of names and values takes a bounded number of inputs; 0: categories are
        ignored.
    stream_rate_half_life
        The half-life, in labelled events, of the stream rate
        (:mod:`stream_lstm.messages.stream_rate`): the moving average of all keys' earlier
        labels, a feature the learner adds itself once its stream has more than one key; 0: none.
    trend_scales
        How many trend inputs each feature gets (:mod:`stream_lstm.learner.trend`): its
        deviation from the key's exponential moving average of it, at half-lives of 4, 16, 64, ...
        events of the key; 0: none.
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
    >>> probabilities = learner.predict_batch(batch)
    >>> learner.learn_batch(batch)
    >>> probabilities.shape, learner.events_learned, learner.steps  # 2 steps, and an extra one early
    ((2,), 2, 3)
    """

    def __init__(
        self,
        *,
        hidden_size: int = 32,
        tbptt_steps: int = 8,
        learning_rate: float = 0.01,
        lr_boost_half_life: float = DEFAULT_LR_BOOST_HALF_LIFE,
        clip_grad_norm: float = 1.0,
        steps_per_batch: int = 2,
        extra_step_events: int = DEFAULT_EXTRA_STEP_EVENTS,
        base_rate_odds: float = DEFAULT_BASE_RATE_ODDS,
        input_clip: float = 10.0,
        max_keys: int = 100_000,
        max_features: int = 32,
        category_buckets: int = DEFAULT_CATEGORY_BUCKETS,
        trend_scales: int = DEFAULT_TREND_SCALES,
        stream_rate_half_life: float = DEFAULT_STREAM_RATE_HALF_LIFE,
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
        check_steps_per_batch(steps_per_batch)
        check_trend_scales(trend_scales)
        if (
            isinstance(category_buckets, bool)
            or not isinstance(category_buckets, int)
            or category_buckets < 0
        ):
            raise ConfigError(f"category_buckets must be a non-negative integer, got {category_buckets!r}")
        _checked_learning_rate(learning_rate)
        _checked_clip_grad_norm(clip_grad_norm)
        if not (isinstance(input_clip, (int, float)) and 0 < input_clip < math.inf):
            raise ConfigError(f"input_clip must be a finite number > 0, got {input_clip!r}")
        self.hidden_size = hidden_size
        self.tbptt_steps = tbptt_steps
        self.learning_rate = learning_rate
        self.lr_boost_half_life = check_lr_boost_half_life(lr_boost_half_life)
        self.clip_grad_norm = clip_grad_norm
        self.steps_per_batch = steps_per_batch
        self.extra_step_events = check_extra_step_events(extra_step_events)
        self.base_rate_odds = check_base_rate_odds(base_rate_odds)
        self.input_clip = float(input_clip)
        self.max_keys = max_keys
        self.max_features = max_features
        self.category_buckets = category_buckets
        self.trend_scales = trend_scales
        self.stream_rate_half_life = check_stream_rate_half_life(stream_rate_half_life)
        self.adapt_scaler = adapt_scaler
        self.device = device
        self.seed = seed
        self._build()

    def _build(self) -> None:
        device = resolve_device(self.device)  # checked even where the tensors stay on the CPU
        self._device = torch.device("cpu") if learners_kept_on_cpu() else device
        sizes = (self.max_features, self.category_buckets, self.trend_scales)
        self.input_size = input_size(*sizes)
        self.network = seeded_network(
            self.input_size, self.hidden_size, self.seed, later_inputs=later_input_groups(*sizes)
        ).to(self._device)
        self._trend_rates = trend_rates(self.trend_scales)
        self._parameters = list(self.network.parameters())
        lstm = self.network.lstm
        self._lstm_weights = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
        self.optimizer = FusedAdam(
            self._parameters, lr=self.learning_rate, boost_half_life=self.lr_boost_half_life
        )
        self.keys = self._new_key_store()
        # The log time gap is standardised like a feature, in the last scaler column.
        self.scaler = RunningScaler(self.max_features + 1)
        self.stream_rate = StreamRate(self.stream_rate_half_life)
        self.base_rate = BaseRateAverage(self.base_rate_odds)
        self.feature_columns: dict[str, int] = {}
        #: Feature values dropped because their name came after the first ``max_features``.
        self.features_dropped = 0
        self.events_seen = 0
        self.events_learned = 0
        # Batches handed to the optimizer, skipped ones included (see the steps property).
        self._steps_tried = 0
        # Skipped steps by reason (SKIP_REASONS), counted on the host and on the device (see
        # GuardedTraining).
        self._skipped = [0, 0]
        self._skipped_on_device: torch.Tensor | None = None
        self._batch_skipped: torch.Tensor | None = None  # the device's flag for the batch in hand
        self._check_on_host = self._device.type == "cpu"
        # Kept as tensors: reading them would synchronise with the device every batch.
        self._last_loss: torch.Tensor | None = None
        self._last_grad_norm: torch.Tensor | None = None
        self._pending: Pending | None = None
        # Tests switch the steady-state path off to compare it with the general chunked one.
        self._full_window_path = True
        self._one_key_path = True
        self._one_key_plan: tuple[ChunkPlan, bool] | None = None
        self._plans = PlanCache()
        # Off once imported key states hold inputs in columns without a name (see import_keys).
        self._narrow_inputs = True
        # On once a category bucket holds a value in an input or a stored window (see _input_columns).
        self._category_inputs_used = False

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
            "lr_boost_half_life": self.lr_boost_half_life,
            "clip_grad_norm": self.clip_grad_norm,
            "steps_per_batch": self.steps_per_batch,
            "extra_step_events": self.extra_step_events,
            "base_rate_odds": self.base_rate_odds,
            "input_clip": self.input_clip,
            "max_keys": self.max_keys,
            "max_features": self.max_features,
            "category_buckets": self.category_buckets,
            "trend_scales": self.trend_scales,
            "stream_rate_half_life": self.stream_rate_half_life,
            "adapt_scaler": self.adapt_scaler,
            "device": self.device,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ predict and learn

    def predict_batch(self, events: Sequence[Event]) -> np.ndarray:
        """Probability that each event's label is 1, from earlier events and earlier batches only:
        the network's, averaged with the base rate (see ``base_rate_odds``).

        Keeps the forward pass so that :meth:`learn_batch` on the same batch can reuse it.
        """
        if not events:
            return np.zeros(0)
        self._pending = self._forward(events)
        return self.base_rate.blend(self._pending.probabilities)

    def learn_batch(self, events: Sequence[Event]) -> None:
        """Advance every key past ``events`` and take :meth:`steps_for_next_batch` optimizer steps
        on their labels.

        A step is skipped, and counted (:meth:`guard_stats`), when the loss or the gradient
        norm is not finite, and no further step is taken on the batch; the key states written are
        then made finite (non-finite values: 0). With several steps, each step after the first
        runs the batch's truncated chunks again from the start states of the first pass, and the
        key states written are those of the first pass (the one the predictions came from).
        ``events_learned`` counts each labelled event once, those of skipped batches too. The
        average with the base rate learns from the network's probabilities of the first pass.
        """
        if not events:
            return
        pending = self._pending
        if pending is None or pending.events is not events:
            pending = self._forward(events)
        self._pending = None
        batch = pending.batch
        # A forward pass that came out non-finite leaves states that must not be kept as they are.
        unsafe_states = not pending.finite
        if batch.targets is not None:
            steps = self.steps_for_next_batch()
            skipped = self._train(pending)
            for _ in range(1, steps):
                if self._check_on_host and skipped:
                    break  # a skipped step: no more steps on this batch
                skipped = self._train(self._forward_again(pending), again=True)
            unsafe_states |= skipped
            self.base_rate.learn(batch.label_values, pending.probabilities)
        new_h0, new_c0, new_window = pending.new_h0, pending.new_c0, pending.new_window
        if unsafe_states:
            new_h0, new_c0, new_window = map(finite_or_zero, (new_h0, new_c0, new_window))
        store = self.keys
        slot_index, slots = batch.slot_index, batch.groups.slots
        store.h0.index_copy_(0, slot_index, new_h0)
        store.c0.index_copy_(0, slot_index, new_c0)
        store.window.index_copy_(0, slot_index, new_window)
        store.window_len[slots] = pending.new_window_len
        store.prev_label[slots] = batch.last_label
        store.last_ts[slots] = batch.last_ts
        store.trend[slots] = batch.trend_after
        self.stream_rate.learned(batch.rate_after, batch_keys(events))
        if self.adapt_scaler:
            self.scaler.update(batch.raw_features, batch.raw_columns)
        self.events_seen += len(events)

    def steps_for_next_batch(self) -> int:
        """The optimizer steps the next labelled batch gets: ``steps_per_batch``, and one more while
        fewer than ``extra_step_events`` labelled events have been learned."""
        return self.steps_per_batch + (self.events_learned < self.extra_step_events)

    def device_memory_bytes(self) -> int:
        """GPU memory torch holds on this learner's device (0 on the CPU)."""
        if self._device.type != "cuda":
            return 0
        return int(torch.cuda.memory_allocated(self._device))

    # ------------------------------------------------------------------ persistence

    def change_settings(self, changes: dict[str, Any]) -> None:
        """Apply settings that may change when a checkpoint is resumed (:data:`CHANGEABLE_SETTINGS`):
        the step size (Adam's too) and its early boost, the gradient clip, the steps per batch,
        the early extra step, the prior odds of the average with the base rate, and the device
        (the learner is rebuilt there from its data form)."""
        unknown = set(changes) - set(CHANGEABLE_SETTINGS)
        if unknown:
            raise ConfigError(f"{', '.join(sorted(unknown))} cannot change on a learner that has learned")
        # Every value is checked before any is applied: a refused change leaves the learner as it was.
        checks = {
            "learning_rate": _checked_learning_rate,
            "lr_boost_half_life": check_lr_boost_half_life,
            "clip_grad_norm": _checked_clip_grad_norm,
            "steps_per_batch": check_steps_per_batch,
            "extra_step_events": check_extra_step_events,
            "base_rate_odds": check_base_rate_odds,
        }
        checked = {name: check(changes[name]) for name, check in checks.items() if name in changes}
        if "device" in changes:
            state = self.to_state()
            state["hyperparameters"]["device"] = changes["device"]
            self._restore(state, "learner")
        if "learning_rate" in checked:
            self.learning_rate = self.optimizer.lr = checked["learning_rate"]
        if "lr_boost_half_life" in checked:
            self.lr_boost_half_life = self.optimizer.boost_half_life = checked["lr_boost_half_life"]
        if "clip_grad_norm" in checked:
            self.clip_grad_norm = checked["clip_grad_norm"]
        if "steps_per_batch" in checked:
            self.steps_per_batch = checked["steps_per_batch"]
        if "extra_step_events" in checked:
            self.extra_step_events = checked["extra_step_events"]
        if "base_rate_odds" in checked:
            self.base_rate_odds = checked["base_rate_odds"]
            self.base_rate = self.base_rate.with_odds(self.base_rate_odds)


def _checked_learning_rate(value: Any) -> Any:
    """``value`` if it is a step size Adam can take (0 or more), else ConfigError."""
    if not value >= 0:
        raise ConfigError(f"learning_rate must be >= 0, got {value!r}")
    return value


def _checked_clip_grad_norm(value: Any) -> Any:
    """``value`` if it is a gradient norm to clip to (more than 0), else ConfigError."""
    if not value > 0:
        raise ConfigError(f"clip_grad_norm must be > 0, got {value!r}")
    return value
