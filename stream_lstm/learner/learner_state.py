"""The LSTM learner as data: what a checkpoint holds of it, and the strict reading back.

:class:`LearnerPersistence`, a base of :class:`~stream_lstm.learner.lstm_learner.LSTMLearner`:
:meth:`~LearnerPersistence.to_state` gives the tree of :mod:`stream_lstm.models.state_data`: the
hyperparameters, the weights, Adam's averages and step counts, the key store, the scaler's
statistics, the feature layout and the counters, every tensor as a NumPy array of float32.
:meth:`~LearnerPersistence.from_state` reads one back into a learner built from its hyperparameters, after
checking every shape against them: the network is first laid out on torch's ``meta`` device,
which allocates nothing, so that no number in a hostile checkpoint can make it allocate more
memory than the checkpoint's own bytes.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Self

import numpy as np
import torch

from stream_lstm.errors import ConfigError
from stream_lstm.learner.base_rate import NO_BASE_RATE_STATE, BaseRateAverage
from stream_lstm.learner.devices import resolve_device
from stream_lstm.learner.encoding import input_size
from stream_lstm.learner.key_state import KeyStateStore
from stream_lstm.learner.limits import (
    MAX_STEPS_PER_BATCH,
    check_base_rate_odds,
    check_extra_step_events,
    check_lr_boost_half_life,
)
from stream_lstm.learner.network import LSTMNetwork
from stream_lstm.learner.placement import fallback_device
from stream_lstm.learner.scaler import RunningScaler
from stream_lstm.learner.training import SKIP_REASONS
from stream_lstm.messages.stream_rate import NO_STREAM_RATE, StreamRate, check_stream_rate_half_life
from stream_lstm.messages.trend_scales import MAX_TREND_SCALES
from stream_lstm.models.state_data import Fields, State, checked_array, checked_by, checked_int, damaged

log = logging.getLogger(__name__)

#: The fields of a learner's state, besides ``kind`` and the skip counts.
_FIELDS = (
    "kind",
    "hyperparameters",
    "network",
    "optimizer",
    "keys",
    "scaler",
    "feature_columns",
    "stream_rate",
    "base_rate",
    "features_dropped",
    "events_seen",
    "events_learned",
    "steps",
    "narrow_inputs",
    "last_loss",
    "last_grad_norm",
    *(f"skipped_{reason}" for reason in SKIP_REASONS),
)
_HYPERPARAMETERS = (
    "hidden_size",
    "tbptt_steps",
    "learning_rate",
    "lr_boost_half_life",
    "clip_grad_norm",
    "steps_per_batch",
    "extra_step_events",
    "base_rate_odds",
    "input_clip",
    "max_keys",
    "max_features",
    "category_buckets",
    "trend_scales",
    "stream_rate_half_life",
    "adapt_scaler",
    "device",
    "seed",
)
_OPTIMIZER_FIELDS = ("lr", "betas", "eps", "step", "exp_avg", "exp_avg_sq")
_SMALLEST = math.ulp(0.0)
#: Keys a new learner's store has room for before it grows (see KeyStateStore).
_INITIAL_KEY_CAPACITY = 1024


def _array(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.detach().to("cpu", torch.float32).numpy().copy()


class LearnerPersistence:
    """The learner's data form, and the learner process's pickles of it (a base of the learner:
    it reads and sets the learner's own attributes, which :meth:`_restore` builds)."""

    def to_state(self) -> State:
        """The learner as data (not between a prediction and its learning): what a checkpoint holds."""
        return _learner_state(self)

    @classmethod
    def from_state(cls, tree: Any, where: str) -> Self:
        """The learner of a :meth:`to_state`; :class:`~stream_lstm.errors.CheckpointRejected` if
        ``tree`` is not one. Within :func:`~stream_lstm.learner.placement.learners_on_cpu` its
        tensors stay on the CPU, as a new learner's do."""
        learner = cls.__new__(cls)
        _restore_learner(learner, tree, where)
        return learner

    def _restore(self, tree: Any, where: str) -> None:
        """Make this learner the one of ``tree`` (a :meth:`to_state`), rebuilding its tensors."""
        _restore_learner(self, tree, where)

    # The learner process receives its learner pickled over its pipe: in its data form too.
    def __getstate__(self) -> State:
        return self.to_state()

    def __setstate__(self, state: State) -> None:
        _restore_learner(self, state, "learner")


def _learner_state(learner: Any) -> State:
    if learner._pending is not None:
        raise RuntimeError("cannot save between predict_batch and learn_batch")
    optimizer = learner.optimizer.state_dict()
    group = optimizer["param_groups"][0]
    per_parameter = [optimizer["state"][index] for index in sorted(optimizer["state"])]
    skipped = learner._skip_counts()
    return {
        "kind": "lstm",
        "hyperparameters": learner.hyperparameters(),
        "network": {name: _array(value) for name, value in learner.network.state_dict().items()},
        "optimizer": {
            "lr": float(group["lr"]),
            "betas": [float(beta) for beta in group["betas"]],
            "eps": float(group["eps"]),
            "step": [_array(torch.as_tensor(s["step"])) for s in per_parameter],
            "exp_avg": [_array(s["exp_avg"]) for s in per_parameter],
            "exp_avg_sq": [_array(s["exp_avg_sq"]) for s in per_parameter],
        },
        "keys": learner.keys.to_state(),
        "scaler": learner.scaler.to_state(),
        "feature_columns": {
            "names": list(learner.feature_columns),
            "columns": np.fromiter(learner.feature_columns.values(), np.int64, len(learner.feature_columns)),
        },
        "stream_rate": learner.stream_rate.to_state(),
        "base_rate": learner.base_rate.to_state(),
        "features_dropped": learner.features_dropped,
        "events_seen": learner.events_seen,
        "events_learned": learner.events_learned,
        "steps": learner.steps,
        "narrow_inputs": learner._narrow_inputs,
        "last_loss": _array(learner._last_loss),
        "last_grad_norm": _array(learner._last_grad_norm),
        **{f"skipped_{reason}": count for reason, count in zip(SKIP_REASONS, skipped, strict=True)},
    }


#: Hyperparameters that later versions added, with the value every learner written before them
#: had: no category inputs, one optimizer step per batch, no trend inputs, no stream rate, no
#: early boost of the step size, no early extra step, no average with the base rate.
ADDED_LATER_DEFAULTS = {
    "lr_boost_half_life": 0.0,
    "extra_step_events": 0,
    "base_rate_odds": 0.0,
    "category_buckets": 0,
    "steps_per_batch": 1,
    "trend_scales": 0,
    "stream_rate_half_life": 0.0,
}


def _hyperparameters(fields: Fields) -> dict[str, Any]:
    tree = fields.raw("hyperparameters")
    if isinstance(tree, dict):
        tree = {**ADDED_LATER_DEFAULTS, **tree}
    read = Fields(tree, fields.path("hyperparameters"), _HYPERPARAMETERS)
    return {
        "hidden_size": read.int("hidden_size", low=1),
        "tbptt_steps": read.int("tbptt_steps", low=1),
        "learning_rate": read.float("learning_rate", low=0.0),
        "lr_boost_half_life": checked_by(
            check_lr_boost_half_life, read.raw("lr_boost_half_life"), read.path("lr_boost_half_life")
        ),
        "clip_grad_norm": read.float("clip_grad_norm", low=_SMALLEST),
        "steps_per_batch": read.int("steps_per_batch", low=1, high=MAX_STEPS_PER_BATCH),
        "extra_step_events": checked_by(
            check_extra_step_events, read.raw("extra_step_events"), read.path("extra_step_events")
        ),
        "base_rate_odds": checked_by(
            check_base_rate_odds, read.raw("base_rate_odds"), read.path("base_rate_odds")
        ),
        "input_clip": read.float("input_clip", low=_SMALLEST),
        "max_keys": read.int("max_keys", low=1),
        "max_features": read.int("max_features", low=1),
        "category_buckets": read.int("category_buckets"),
        "trend_scales": read.int("trend_scales", high=MAX_TREND_SCALES),
        "stream_rate_half_life": checked_by(
            check_stream_rate_half_life, read.raw("stream_rate_half_life"), read.path("stream_rate_half_life")
        ),
        "adapt_scaler": read.bool("adapt_scaler"),
        "device": read.str("device"),
        "seed": read.int("seed", low=-(2**63), high=2**64 - 1),
    }


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(array.copy()).to(device)


def _optional_scalar(fields: Fields, name: str, device: torch.device) -> torch.Tensor | None:
    value = fields.raw(name)
    return None if value is None else _tensor(checked_array(value, fields.path(name), "float32", ()), device)


def _restore_learner(learner: Any, tree: Any, where: str) -> None:
    """Make ``learner`` (made with ``__new__``) the learner of a :func:`_learner_state`;
    :class:`~stream_lstm.errors.CheckpointRejected` if ``tree`` is not one."""
    tree = _with_parts_of_old_versions(tree, where)
    fields = Fields(tree, where, _FIELDS)
    fields.str("kind", choices=("lstm",))
    hyper = _hyperparameters(fields)
    hidden = hyper["hidden_size"]
    size = input_size(hyper["max_features"], hyper["category_buckets"], hyper["trend_scales"])
    with torch.device("meta"):  # the shapes, without allocating the weights
        shapes = LSTMNetwork(size, hidden).state_dict()
    layout = {name: tuple(value.shape) for name, value in shapes.items()}
    network = fields.nested("network", layout)
    weights = {name: network.array(name, "float32", shape) for name, shape in layout.items()}
    keys = fields.raw("keys")
    capacity = KeyStateStore.state_capacity(keys, fields.path("keys"))
    if not min(_INITIAL_KEY_CAPACITY, hyper["max_keys"]) <= capacity <= hyper["max_keys"]:
        raise damaged(fields.path("keys.capacity"), "not a capacity a key store of these settings has")
    hyper["device"] = _usable_device(hyper["device"])
    for name, value in hyper.items():
        setattr(learner, name, value)
    learner._build()  # allocates what the arrays checked above hold, no more
    device = learner._device
    learner.network.load_state_dict({name: _tensor(value, device) for name, value in weights.items()})
    _restore_optimizer(learner, fields.nested("optimizer", _OPTIMIZER_FIELDS))
    learner.keys.load_state(keys, fields.path("keys"))
    # Averages of clipped inputs: one beyond the clip is not this learner's (float32 slack).
    if (np.abs(learner.keys.trend) > learner.input_clip * (1 + 1e-6)).any():
        clip = learner.input_clip
        raise damaged(fields.path("keys.trend"), f"an average is beyond the input clip {clip:g}")
    # Read from the checked arrays on the host: the store's tensors may be on a device.
    learner._category_inputs_used = len(learner.keys) > 0 and learner._windows_use_category_buckets(
        torch.as_tensor(keys["window"])
    )
    columns = hyper["max_features"] + 1
    learner.scaler = RunningScaler.from_state(fields.raw("scaler"), fields.path("scaler"), columns)
    learner.feature_columns = _feature_columns(fields, hyper["max_features"])
    learner.stream_rate = StreamRate.from_state(
        fields.raw("stream_rate"), fields.path("stream_rate"), hyper["stream_rate_half_life"]
    )
    learner.base_rate = BaseRateAverage.from_state(
        fields.raw("base_rate"), fields.path("base_rate"), hyper["base_rate_odds"]
    )
    learner.features_dropped = fields.int("features_dropped")
    learner.events_seen = fields.int("events_seen")
    learner.events_learned = fields.int("events_learned")
    learner._skipped = [fields.int(f"skipped_{reason}") for reason in SKIP_REASONS]
    learner._steps_tried = fields.int("steps") + sum(learner._skipped)
    learner._narrow_inputs = fields.bool("narrow_inputs")
    learner._last_loss = _optional_scalar(fields, "last_loss", device)
    learner._last_grad_norm = _optional_scalar(fields, "last_grad_norm", device)


def _with_parts_of_old_versions(tree: Any, where: str) -> Any:
    """``tree``, with the parts of the state that later versions added as a learner written before
    them had them (no stream rate; no average with the base rate, nothing learned) where it has
    neither the part nor its hyperparameter; :class:`~stream_lstm.errors.CheckpointRejected` where
    it has only one of them."""
    if not isinstance(tree, dict):
        return tree  # refused by the reader
    hyper = tree.get("hyperparameters")
    for part, hyperparameter, absent, what in _ADDED_PARTS:
        has_setting = isinstance(hyper, dict) and hyperparameter in hyper
        if has_setting != (part in tree):
            raise damaged(where, f"{what} and its {hyperparameter} come together or not at all")
        if not has_setting:
            tree = {**tree, part: absent}
    return tree


#: Parts of the state that later versions added: the part, its hyperparameter, its state in a
#: learner written before it, and what it is.
_ADDED_PARTS = (
    ("stream_rate", "stream_rate_half_life", NO_STREAM_RATE, "the stream rate"),
    ("base_rate", "base_rate_odds", NO_BASE_RATE_STATE, "the average with the base rate"),
)


def _usable_device(device: str) -> str:
    """``device``, or the fallback of :func:`~stream_lstm.learner.placement.learners_fall_back_to`
    where this host lacks it (else the ConfigError that says so)."""
    fallback = fallback_device()
    try:
        resolve_device(device)
    except ConfigError:
        if fallback is None or fallback == device:
            raise
        log.info(
            "the checkpoint's learner ran on %s, which this host lacks: restoring it on %s", device, fallback
        )
        return fallback
    return device


def _restore_optimizer(learner: Any, read: Fields) -> None:
    betas = read.list("betas")
    if len(betas) != 2:
        raise damaged(read.path("betas"), "expected two numbers")
    pair = Fields(dict(zip(("beta1", "beta2"), betas, strict=True)), read.path("betas"), ("beta1", "beta2"))
    saved = learner.optimizer.state_dict()  # the fresh optimizer's, in its own format
    group = saved["param_groups"][0]
    group.update(
        lr=read.float("lr", low=0.0),
        betas=(pair.float("beta1", low=0.0, high=1.0), pair.float("beta2", low=0.0, high=1.0)),
        eps=read.float("eps", low=0.0),
    )
    parameters = learner._parameters
    lists = {name: read.list(name) for name in ("step", "exp_avg", "exp_avg_sq")}
    if (
        any(len(values) not in (0, len(parameters)) for values in lists.values())
        or len({len(values) for values in lists.values()}) != 1
    ):
        raise damaged(read.where, "the averages are not one per parameter")
    state = {}
    for index, parameter in enumerate(parameters if lists["step"] else []):
        shape = tuple(parameter.shape)
        at = f"{read.where}[{index}]"
        state[index] = {
            name: _tensor(
                checked_array(lists[name][index], f"{at}.{name}", "float32", () if name == "step" else shape),
                parameter.device,
            )
            for name in ("step", "exp_avg", "exp_avg_sq")
        }
    saved["state"] = state
    learner.optimizer.load_state_dict(saved)


def _feature_columns(fields: Fields, max_features: int) -> dict[str, int]:
    read = fields.nested("feature_columns", ("names", "columns"))
    names = read.strings("names")
    columns = checked_array(read.raw("columns"), read.path("columns"), "int64", (len(names),)).tolist()
    for column in columns:
        checked_int(column, read.path("columns"), high=max_features - 1)
    if len(set(columns)) != len(columns):
        raise damaged(read.path("columns"), "two features share a column")
    return dict(zip(names, columns, strict=True))
