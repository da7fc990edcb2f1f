"""``no_change``: the same key's previous label (the persistence forecast), 0.5 before any.

It follows the learner's protocol: :meth:`~NoChangeBaseline.predict_batch` for a micro-batch uses
the labels learned from earlier batches and earlier labels of the same key in the batch; then
:meth:`~NoChangeBaseline.learn_batch` remembers the batch's labels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from stream_lstm.errors import ConfigError
from stream_lstm.messages.events import Event
from stream_lstm.models.protocols import KeyedModel
from stream_lstm.models.recent_keys import remember
from stream_lstm.models.state_data import Fields, State, damaged, labels_from_state, labels_state


class NoChangeBaseline(KeyedModel):
    """Predicts the same key's previous label; tracks at most ``max_keys`` keys (LRU).

    Examples
    --------
    >>> model = NoChangeBaseline()
    >>> batch = [Event(key="a", label=1), Event(key="a", label=0), Event(key="b", label=0)]
    >>> model.predict_batch(batch).tolist()
    [0.5, 1.0, 0.5]
    """

    def __init__(self, *, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ConfigError(f"max_keys must be at least 1, got {max_keys}")
        self.max_keys = max_keys
        self.last_label: OrderedDict[str, int] = OrderedDict()

    def predict_batch(self, events: Sequence[Event]) -> np.ndarray:
        """The previous label of each event's key (earlier events of this batch included)."""
        in_batch: dict[str, int] = {}
        stored = self.last_label
        result = np.empty(len(events))
        for i, event in enumerate(events):
            previous = in_batch.get(event.key)
            if previous is None:
                previous = stored.get(event.key)
            result[i] = 0.5 if previous is None else float(previous)
            if event.label is not None:
                in_batch[event.key] = event.label
        return result

    def learn_batch(self, events: Sequence[Event]) -> None:
        """Remember each key's latest label."""
        labelled = ((event.key, event.label) for event in events if event.label is not None)
        remember(self.last_label, labelled, self.max_keys)

    def tracked_keys(self) -> Collection[str]:
        """The keys whose latest label is known."""
        return self.last_label.keys()

    def export_keys(self, keys: Sequence[str]) -> dict[str, int]:
        """The latest label of those of ``keys`` that have one (see :meth:`import_keys`)."""
        wanted = set(keys)
        # In least-recently-used order, which import_keys keeps.
        return {key: label for key, label in self.last_label.items() if key in wanted}

    def import_keys(self, state: dict[str, int]) -> None:
        """Take over the latest labels of an :meth:`export_keys`."""
        remember(self.last_label, state.items(), self.max_keys)

    def forget_keys(self, keys: Sequence[str]) -> None:
        """Drop the latest label of ``keys``."""
        for key in keys:
            self.last_label.pop(key, None)

    def detach_keys(self) -> OrderedDict[str, int]:
        """Take out every key's label, leaving none; :meth:`attach_keys` puts them back."""
        labels, self.last_label = self.last_label, OrderedDict()
        return labels

    def attach_keys(self, labels: OrderedDict[str, int]) -> None:
        """Put back what :meth:`detach_keys` took out."""
        self.last_label = labels

    def to_state(self) -> State:
        """The model as data: ``max_keys`` and every key's latest label, least recent first."""
        return {"kind": "no_change", "max_keys": self.max_keys, "last_label": labels_state(self.last_label)}

    @classmethod
    def from_state(cls, tree: Any, where: str) -> NoChangeBaseline:
        """The model of a :meth:`to_state` (:class:`~stream_lstm.errors.CheckpointRejected` if
        ``tree`` is not one)."""
        fields = Fields(tree, where, ("kind", "max_keys", "last_label"))
        fields.str("kind", choices=("no_change",))
        model = cls(max_keys=fields.int("max_keys", low=1))
        labels = labels_from_state(fields.raw("last_label"), fields.path("last_label"))
        if len(labels) > model.max_keys:
            raise damaged(fields.path("last_label"), "more keys than max_keys")
        model.last_label = OrderedDict(labels)
        return model
