"""Checkpoints of the old pickle format, converted once on the user's word: the one unpickling.

Before format 2 (the first versions of stream-lstm), a checkpoint was the magic line, the version 1,
then a pickle of the state, and loading it ran whatever code the pickle named: whoever could
write a checkpoint file or a record of the checkpoint topic could run code in the service. The
stores now refuse that format (:class:`~stream_lstm.errors.CheckpointRejected`, reason
``old_format``). A user who knows that an old checkpoint is their own converts it once with
``stream-lstm convert-checkpoint OLD NEW --trust-pickle``, which calls
:func:`unpickle_trusted_checkpoint` here and writes the data format; nothing else imports this
module.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from stream_lstm.errors import CheckpointError
from stream_lstm.state.codec import MAGIC, PICKLE_SCHEMA, checkpoint_schema
from stream_lstm.state.store import InstanceState, PartitionState

#: Where the modules of checkpoints written before the package was laid out by data path went,
#: and the classes that moved since. A pickle names each object's module.
MOVED_MODULES = {
    "stream_lstm.baselines": "stream_lstm.models.baselines",
    "stream_lstm.evaluation": "stream_lstm.evaluation.prequential",
    "stream_lstm.learner_process": "stream_lstm.learner.process",
    "stream_lstm.state_store": "stream_lstm.state.directory_store",
}
#: Classes that moved to a module of their own since, by (module, name) after MOVED_MODULES.
_NO_CHANGE = "NoChangeBaseline"
MOVED_CLASSES = {("stream_lstm.models.baselines", _NO_CHANGE): ("stream_lstm.models.no_change", _NO_CHANGE)}
_LEARNER = ("stream_lstm.learner.lstm_learner", "LSTMLearner")


class PickledLearner:
    """An LSTM learner as the old format pickled it: the dict of its old ``__getstate__``, made
    a learner once unpickling is over (:func:`unpickle_trusted_checkpoint`)."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = state


class _TrustedUnpickler(pickle.Unpickler):
    """Unpickles a trusted old checkpoint: moved modules renamed, learners kept as their dict."""

    def find_class(self, module: str, name: str) -> Any:
        module = MOVED_MODULES.get(module, module)
        module, name = MOVED_CLASSES.get((module, name), (module, name))
        if (module, name) == _LEARNER:
            return PickledLearner
        if name == "loads" and module in ("pickle", "_pickle"):
            return _unpickle_trusted  # a learner process pickled itself as a pickle of its learner
        return super().find_class(module, name)


def _unpickle_trusted(data: bytes) -> Any:
    return _TrustedUnpickler(io.BytesIO(data)).load()


def is_pickle_checkpoint(data: bytes) -> bool:
    """Whether ``data`` is a checkpoint of the old pickle format (by its header; nothing is read)."""
    return checkpoint_schema(data) == PICKLE_SCHEMA


def unpickle_trusted_checkpoint(data: bytes, where: str) -> InstanceState | PartitionState:
    """The state of a checkpoint of the old pickle format. **This runs any code the checkpoint
    names**: call it only for a checkpoint you know you wrote (``--trust-pickle``)."""
    if not is_pickle_checkpoint(data):
        raise CheckpointError(f"{where} is not a checkpoint of the old pickle format")
    try:
        state = _unpickle_trusted(data[len(MAGIC) + 2 :])
    except Exception as error:
        raise CheckpointError(f"cannot read the old checkpoint {where}: {error}") from error
    if isinstance(state, InstanceState):
        models = state.evaluator.models
        for name, model in models.items():
            if isinstance(model, PickledLearner):
                from stream_lstm.learner.legacy_state import learner_from_pickled_state

                models[name] = learner_from_pickled_state(model.state)
        return state
    if isinstance(state, PartitionState):
        lstm = state.key_state.get("lstm")
        if isinstance(lstm, dict):
            # Exports of versions before the feature layout travelled with them: none known.
            lstm.setdefault("feature_columns", {})
        return state
    raise CheckpointError(f"{where} holds a {type(state).__name__}, not a checkpoint state")
