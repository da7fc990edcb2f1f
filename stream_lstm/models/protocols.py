"""What a model can do, declared by the classes it derives from (in the spirit of river's bases).

Every model is an :class:`OnlineClassifier`. A model says what else it offers by deriving from
the capability classes below, and whoever needs a capability asks with ``isinstance``: the
evaluator and the service never probe for methods by name, nor pick a model out by its name.

* :class:`KeyedModel`: state per entity key that can be exported, imported, forgotten, and
  detached while a partition is away (the LSTM and the no-change baseline).
* :class:`GuardedModel`: guards that skip non-finite updates or drop values, with counts of what
  they left out, and a check of its own state for non-finite numbers (the LSTM, the logistic
  regression).
* :class:`TrainedModel`: a trained network whose optimizer steps, loss, gradient norm, key
  counts, device memory and hyperparameters the service publishes (the LSTM).
* :class:`PredictsApart`: predicts in another process, so its prediction of the next batch can
  start while this process finishes the current one (the LSTM's learner process).

The classes hold no state and no ``__init__``, so deriving from them changes nothing in a pickle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from stream_lstm.messages.events import Event


class OnlineClassifier(ABC):
    """A binary classifier that learns one micro-batch at a time, test-then-train."""

    @abstractmethod
    def predict_batch(self, events: Sequence[Event]) -> np.ndarray:
        """P(label = 1) for each event, before any of them is learned."""

    @abstractmethod
    def learn_batch(self, events: Sequence[Event]) -> None:
        """Learn the batch (events without a label only move the per-key state on)."""


class KeyedModel(OnlineClassifier):
    """A model with state per entity key, which can move between processes and instances."""

    @abstractmethod
    def tracked_keys(self) -> Collection[str]:
        """The keys it holds state for."""

    @abstractmethod
    def export_keys(self, keys: Sequence[str]) -> Any:
        """The state of ``keys``, as :meth:`import_keys` takes it."""

    @abstractmethod
    def import_keys(self, state: Any) -> None:
        """Take over keys exported by a model of the same kind."""

    @abstractmethod
    def forget_keys(self, keys: Sequence[str]) -> None:
        """Drop the state of ``keys``."""

    @abstractmethod
    def detach_keys(self) -> Any:
        """Hand over every key's state and start with none (see :meth:`attach_keys`)."""

    @abstractmethod
    def attach_keys(self, store: Any) -> None:
        """Take back what :meth:`detach_keys` handed over, replacing the current key state."""


class GuardedModel(OnlineClassifier):
    """A model whose guards can leave updates or values out, and that can check its own state."""

    @abstractmethod
    def guard_stats(self) -> dict[str, int]:
        """What the guards left out so far, by reason (cumulative counts)."""

    @abstractmethod
    def non_finite_parts(self) -> list[str]:
        """The parts of its state that hold a non-finite number (empty when all is well)."""


class TrainedModel(KeyedModel, GuardedModel):
    """A trained network: the model whose training the service publishes."""

    #: Optimizer steps taken so far (the model step of the offsets it has learned).
    steps: int
    #: Where its tensors live.
    torch_device: Any

    @abstractmethod
    def hyperparameters(self) -> dict[str, Any]:
        """Its keyword arguments, as given or defaulted."""

    @abstractmethod
    def training_stats(self) -> dict[str, float]:
        """The latest training ``loss`` and ``grad_norm``."""

    @abstractmethod
    def key_stats(self) -> dict[str, int]:
        """Keys ``tracked`` now and ``evicted`` so far."""

    @abstractmethod
    def device_memory_bytes(self) -> int:
        """Device memory its tensors take (0 on the CPU)."""

    @abstractmethod
    def change_settings(self, changes: dict[str, Any]) -> None:
        """Take new values of the hyperparameters that may change on a resumed checkpoint (the
        step size, say); :class:`~stream_lstm.errors.ConfigError` for any other."""


class PredictsApart(OnlineClassifier):
    """A model that predicts in another process, one batch ahead of this one."""

    @abstractmethod
    def start_predict(self, events: Sequence[Event]) -> None:
        """Send ``events`` to be predicted; :meth:`finish_predict` collects the answer."""

    @abstractmethod
    def predicting(self, events: Sequence[Event]) -> bool:
        """Whether ``events`` were already sent by :meth:`start_predict`."""

    @abstractmethod
    def finish_predict(self, events: Sequence[Event]) -> tuple[np.ndarray, float]:
        """The probabilities of ``events`` and the seconds the other process spent on them."""


def models_that(models: dict[str, OnlineClassifier], capability: type) -> dict[str, Any]:
    """The models (by name, in order) that declare ``capability``."""
    return {name: model for name, model in models.items() if isinstance(model, capability)}


def trained_model(models: dict[str, OnlineClassifier]) -> TrainedModel | None:
    """The trained network among ``models`` (the LSTM, or the process running it), if any."""
    return next((model for model in models.values() if isinstance(model, TrainedModel)), None)
