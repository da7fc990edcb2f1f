"""The checkpoint states (:mod:`stream_lstm.state.store`) as data trees, and back.

An instance's checkpoint is its evaluator's ``to_state()`` (models, scores) with the instance id
and the version that wrote it; a partition's is its offsets and counts with the exported key
states of its keys, by model: the LSTM's arrays (:mod:`stream_lstm.learner.key_export`) and the
latest labels of the no-change baseline and of the kappa-temporal reference, and the key histories
of ``logreg_lags`` (:func:`~stream_lstm.models.lag_logreg.histories_to_state`). Reading a tree back
checks every field (:mod:`stream_lstm.models.state_data`).
"""

from __future__ import annotations

from typing import Any

from stream_lstm.evaluation.prequential import REFERENCE, PrequentialEvaluator
from stream_lstm.learner.key_export import check_key_export
from stream_lstm.models.lag_history import check_histories_state
from stream_lstm.models.state_data import Fields, State, damaged, labels_from_state, labels_state
from stream_lstm.state.store import InstanceState, PartitionState

INSTANCE = "instance"
PARTITION = "partition"

_INSTANCE_FIELDS = ("instance", "version", "evaluator")
_PARTITION_FIELDS = (
    "topic",
    "partition",
    "offset",
    "events",
    "dead_letters",
    "keys",
    "key_state",
    "instance",
    "version",
    "epoch",
)
#: The models whose exported key states are each key's latest label.
_LABEL_EXPORTS = ("no_change", REFERENCE)
#: A partition number or offset beyond this is no Kafka one.
_MAX_INT64 = 2**63 - 1


def state_kind(state: Any) -> str:
    """Which kind of checkpoint ``state`` makes (:class:`TypeError` for anything else)."""
    if isinstance(state, InstanceState):
        return INSTANCE
    if isinstance(state, PartitionState):
        return PARTITION
    raise TypeError(f"a checkpoint holds an InstanceState or a PartitionState, not a {type(state).__name__}")


def state_to_tree(state: InstanceState | PartitionState) -> State:
    """``state`` as a tree of JSON values and arrays."""
    if isinstance(state, InstanceState):
        return {"instance": state.instance, "version": state.version, "evaluator": state.evaluator.to_state()}
    return {
        "topic": state.topic,
        "partition": int(state.partition),
        "offset": int(state.offset),
        "events": int(state.events),
        "dead_letters": int(state.dead_letters),
        "keys": list(state.keys),
        "key_state": {name: _export_to_tree(name, export) for name, export in state.key_state.items()},
        "instance": state.instance,
        "version": state.version,
        "epoch": int(state.epoch),
    }


def _export_to_tree(name: str, export: Any) -> Any:
    if name in _LABEL_EXPORTS:
        return labels_state(dict(export))
    # The LSTM's (arrays, or tensors in states converted from the pickle format) and logreg_lags'.
    return {
        field: value.detach().cpu().numpy() if hasattr(value, "detach") else value
        for field, value in export.items()
    }


def tree_to_state(tree: Any, kind: str, where: str) -> InstanceState | PartitionState:
    """The state of a tree of ``kind``; :class:`~stream_lstm.errors.CheckpointRejected` if
    ``tree`` is not one."""
    if kind == INSTANCE:
        fields = Fields(tree, where, _INSTANCE_FIELDS)
        return InstanceState(
            evaluator=PrequentialEvaluator.from_state(fields.raw("evaluator"), fields.path("evaluator")),
            instance=fields.str("instance"),
            version=fields.str("version"),
        )
    fields = Fields(tree, where, _PARTITION_FIELDS)
    key_state = {}
    exports = fields.mapping("key_state")
    for name, export in exports.items():
        at = f"{fields.path('key_state')}.{name}"
        if name in _LABEL_EXPORTS:
            key_state[name] = labels_from_state(export, at)
        elif name == "lstm":
            key_state[name] = check_key_export(export, at)
        elif name == "logreg_lags":
            key_state[name] = check_histories_state(export, at)
        else:
            raise damaged(at, "no model exports key states under this name")
    return PartitionState(
        topic=fields.str("topic"),
        partition=fields.int("partition", high=_MAX_INT64),
        offset=fields.int("offset", high=_MAX_INT64),
        events=fields.int("events", high=_MAX_INT64),
        dead_letters=fields.int("dead_letters", high=_MAX_INT64),
        keys=fields.strings("keys"),
        key_state=key_state,
        instance=fields.str("instance"),
        version=fields.str("version"),
        epoch=fields.int("epoch", high=_MAX_INT64),
    )
