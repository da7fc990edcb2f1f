"""The two baselines every LSTM prediction is compared with.

* ``logreg``: river's ``StandardScaler | LogisticRegression`` on the event's own features.
* ``no_change``: the same key's previous label (the persistence forecast), 0.5 before any.

Both follow the learner's protocol: :meth:`predict_proba_many` for a micro-batch uses only what
was learned from earlier batches plus, for ``no_change``, earlier labels of the same key; then
:meth:`learn_many` learns the batch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence

import numpy as np
from river import linear_model, optim, preprocessing

from stream_lstm.errors import ConfigError
from stream_lstm.events import Event


class LogisticRegressionBaseline:
    """River's standard scaler and logistic regression, learning one event at a time.

    Parameters
    ----------
    learning_rate
        Step size of river's SGD optimizer.
    l2
        L2 regularisation.

    Examples
    --------
    >>> model = LogisticRegressionBaseline()
    >>> batch = [Event(features={"x": 1.0}, label=1), Event(features={"x": -1.0}, label=0)]
    >>> model.predict_proba_many(batch).tolist()
    [0.5, 0.5]
    >>> model.learn_many(batch)
    """

    def __init__(self, *, learning_rate: float = 0.01, l2: float = 0.0) -> None:
        if not learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {learning_rate!r}")
        self.learning_rate = learning_rate
        self.l2 = l2
        # The two steps of river's `StandardScaler | LogisticRegression`, called directly: the
        # same computation as the pipeline, without its per-call dispatch.
        self.scaler = preprocessing.StandardScaler()
        self.classifier = linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate), l2=l2)

    def predict_proba_many(self, events: Sequence[Event]) -> np.ndarray:
        """Probability of label 1 for each event, from the weights before this batch."""
        transform = self.scaler.transform_one
        predict = self.classifier.predict_proba_one
        return np.array([predict(transform(e.features)).get(True, 0.5) for e in events])

    def learn_many(self, events: Sequence[Event]) -> None:
        """Learn each labelled event in order (the scaler first, as the river pipeline does)."""
        scaler, learn = self.scaler, self.classifier.learn_one
        for event in events:
            if event.label is not None:
                scaler.learn_one(event.features)
                learn(scaler.transform_one(event.features), bool(event.label))


class NoChangeBaseline:
    """Predicts the same key's previous label; tracks at most ``max_keys`` keys (LRU).

    Examples
    --------
    >>> model = NoChangeBaseline()
    >>> batch = [Event(key="a", label=1), Event(key="a", label=0), Event(key="b", label=0)]
    >>> model.predict_proba_many(batch).tolist()
    [0.5, 1.0, 0.5]
    """

    def __init__(self, *, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ConfigError(f"max_keys must be at least 1, got {max_keys}")
        self.max_keys = max_keys
        self.last_label: OrderedDict[str, int] = OrderedDict()

    def predict_proba_many(self, events: Sequence[Event]) -> np.ndarray:
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

    def learn_many(self, events: Sequence[Event]) -> None:
        """Remember each key's latest label."""
        stored = self.last_label
        for event in events:
            if event.label is not None:
                stored[event.key] = event.label
                stored.move_to_end(event.key)
        while len(stored) > self.max_keys:
            stored.popitem(last=False)

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
        stored = self.last_label
        for key, label in state.items():
            stored[key] = label
            stored.move_to_end(key)
        while len(stored) > self.max_keys:
            stored.popitem(last=False)

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
