"""The backward pass and the guards: a batch whose loss or gradient norm is not finite changes
neither the weights nor Adam's state, and is counted by reason; a check finds non-finite state."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from stream_lstm.learner.adam import FusedAdam
from stream_lstm.learner.base_rate import BaseRateAverage
from stream_lstm.learner.finite import count_non_finite, describe_count
from stream_lstm.learner.key_state import KeyStateStore
from stream_lstm.learner.network import LSTMNetwork
from stream_lstm.learner.pending import Pending
from stream_lstm.learner.scaler import RunningScaler

# torch's reduction enum value for "mean".
_MEAN = 1
#: The reasons a batch's optimizer step is skipped, in the order they are checked.
SKIP_REASONS = ("non_finite_loss", "non_finite_gradient")


class GuardedTraining:
    """Loss, gradients, the optimizer step and the guards (a base of the LSTM learner,
    :class:`~stream_lstm.learner.lstm_learner.LSTMLearner`).

    On the CPU the loss and the gradient norm are read on the host anyway, so the checks run
    there; a GPU must not wait for them, so there they are a flag on the device that the fused
    Adam kernel reads (``_check_on_host``; tests switch it off to run the device's way on the
    CPU). Skipped steps are counted where the check runs (``_skipped`` on the host,
    ``_skipped_on_device`` on the device: read only by :meth:`guard_stats` and :attr:`steps`,
    since a read waits for the device).
    """

    clip_grad_norm: float
    network: LSTMNetwork
    optimizer: FusedAdam
    scaler: RunningScaler
    base_rate: BaseRateAverage
    keys: KeyStateStore
    events_learned: int
    features_dropped: int
    _device: torch.device
    _parameters: list[torch.nn.Parameter]
    _check_on_host: bool
    _steps_tried: int
    _skipped: list[int]
    _skipped_on_device: torch.Tensor | None
    _batch_skipped: torch.Tensor | None
    _last_loss: torch.Tensor | None
    _last_grad_norm: torch.Tensor | None

    def _train(self, pending: Pending, *, again: bool = False) -> bool:
        """Backpropagate the loss of the labelled events of ``pending`` (it has some) and take
        the optimizer step unless a guard skips it; return whether it was skipped (always True
        on the device path: it is not known there, and the host does not wait to know).

        ``again``: another step on a batch already counted in ``events_learned``. A batch whose
        step was skipped takes no further step: the host stops calling, and on the device a step
        after a skipped one of its batch is neither taken nor counted (see
        :meth:`_step_checked_on_device`).
        """
        batch = pending.batch
        assert batch.targets is not None
        logits = pending.logits
        if batch.label_index is not None:
            logits = logits.index_select(0, batch.label_index)
        # The aten op itself: the functional wrapper's checks cost more than the op here.
        loss = torch.binary_cross_entropy_with_logits(logits, batch.targets, None, None, _MEAN)
        self._steps_tried += 1
        loss_value = loss.detach()
        if not again:  # the batch's loss under the weights it was predicted with
            self.events_learned += batch.targets.numel()
            self._last_loss = loss_value
        if self._check_on_host:
            return self._step_checked_on_host(loss, float(loss_value))
        self._batch_skipped = self._step_checked_on_device(loss, self._batch_skipped if again else None)
        return True

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

    def _step_checked_on_device(self, loss: torch.Tensor, earlier: torch.Tensor | None) -> torch.Tensor:
        """:meth:`_step_checked_on_host` without reading anything back: the checks are a flag
        on the device, which the fused Adam kernel reads (``found_inf``: when it is 1 the kernel
        leaves the weights and the averages alone, and the step counts are put back).

        ``earlier``: 1 when an earlier step on the same batch was skipped (``None`` for a
        batch's first step); then this step is not taken either, and is counted as not tried
        rather than skipped, as on the host, which stops. Returns that flag after this step.
        """
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
            # [loss skips, loss or gradient skips, steps not taken after a skip on their batch]
            self._skipped_on_device = torch.zeros(3, dtype=torch.float64, device=self._device)
        if earlier is None:
            self._skipped_on_device[:2].add_(flags)
            skipped = flags[1]
        else:
            self._skipped_on_device[:2].add_(flags * (1.0 - earlier))
            self._skipped_on_device[2].add_(earlier)
            skipped = torch.maximum(flags[1], earlier)
        self.optimizer.step(found_inf=skipped)
        return skipped

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
        not_taken = 0 if self._skipped_on_device is None else int(self._skipped_on_device[2])
        return self._steps_tried - sum(self._skip_counts()) - not_taken

    def _skip_counts(self) -> list[int]:
        """Skipped steps per reason (SKIP_REASONS), since the learner was built or loaded."""
        counts = list(self._skipped)
        if self._skipped_on_device is not None:
            loss, either, _ = (int(value) for value in self._skipped_on_device.tolist())
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

    def training_stats(self) -> dict[str, float]:
        """The last batch's training loss (the network's), under the weights it was predicted
        with (its first step's), the gradient norm of its last step (NaN before the first step),
        and the network's weight against the base rate in the next predictions (1: its own
        probabilities; see :mod:`~stream_lstm.learner.base_rate`)."""
        loss, norm = self._last_loss, self._last_grad_norm
        return {
            "loss": float(loss) if loss is not None else math.nan,
            "grad_norm": float(norm) if norm is not None else math.nan,
            "network_weight": self.base_rate.network_weight(),
        }


def finite_or_zero(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with its non-finite values replaced by 0."""
    return torch.nan_to_num(tensor, nan=0.0, posinf=0.0, neginf=0.0)
