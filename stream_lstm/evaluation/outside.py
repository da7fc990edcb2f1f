"""Models run in another process and scored here: their probabilities of a batch's labelled events
arrive after the batch (``stream-lstm evaluate`` with two processes), so the batch waits for them.

:class:`OutsideQueue` keeps the waiting batches and the probabilities that arrived, and hands
back each batch once every outside model's probabilities of it are there, in order; the
:class:`~stream_lstm.evaluation.prequential.PrequentialEvaluator` then scores (and mixes) it as
if the models ran there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from stream_lstm.errors import ConfigError
from stream_lstm.evaluation.mixture import MIXTURE, FixedShareMixture


class WaitingBatch(NamedTuple):
    """A labelled batch waiting for the outside models' probabilities of its events."""

    labels: np.ndarray
    reference_correct: np.ndarray  # where no-change was right
    mine: dict[str, np.ndarray]  # the probabilities of the models run here, for the mixture


class OutsideQueue:
    """The labelled batches that wait for the probabilities of the outside models ``names``, and
    those probabilities that arrived for batches not complete yet."""

    def __init__(self, names: Sequence[str]) -> None:
        self._waiting: deque[WaitingBatch] = deque()
        self._arrived: dict[str, list[np.ndarray]] = {name: [] for name in names}

    def wait(self, batch: WaitingBatch) -> None:
        """Queue a labelled batch (after those queued before it)."""
        self._waiting.append(batch)

    def add(self, probabilities: Mapping[str, np.ndarray]) -> None:
        """Take the next probabilities of outside models, by name (of the next labelled events, in
        order); :class:`~stream_lstm.errors.ConfigError` for a name that is not one of them."""
        for name, values in probabilities.items():
            if name not in self._arrived:
                raise ConfigError(f"{name} is not a model scored here from another process")
            self._arrived[name].append(np.asarray(values))

    def complete(self) -> Iterator[tuple[WaitingBatch, dict[str, np.ndarray]]]:
        """Each waiting batch, in order, for which every outside model's probabilities are here,
        with those probabilities (taken off the queue); it stops at the first that is not."""
        while self._waiting:
            size = self._waiting[0].labels.size
            if any(sum(part.size for part in parts) < size for parts in self._arrived.values()):
                return
            batch = self._waiting.popleft()
            yield batch, {name: _take(parts, size) for name, parts in self._arrived.items()}

    def __len__(self) -> int:
        """The batches waiting."""
        return len(self._waiting)


def check_outside(
    models: Sequence[str], outside: Sequence[str], mixture: FixedShareMixture | None, scored_elsewhere: bool
) -> None:
    """Refuse outside models that are not distinct from the models here, a mixture of models
    that are neither, and an evaluator that scores nothing yet has a mixture or outside models."""
    if len(set(outside)) != len(outside) or set(outside) & {*models, MIXTURE}:
        raise ConfigError(
            f"the models scored from another process ({', '.join(outside)}) must be distinct models "
            "not run here"
        )
    unknown = [name for name in (mixture.experts if mixture else ()) if name not in {*models, *outside}]
    if unknown:
        raise ConfigError(f"the mixture mixes {', '.join(unknown)}, which is neither run nor scored here")
    if scored_elsewhere and (outside or mixture is not None):
        raise ConfigError("an evaluator that scores nothing has no mixture and scores no model of another")


def labelled_probabilities(
    predictions: Mapping[str, np.ndarray], names: Sequence[str], labelled: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The probabilities of models ``names`` for a batch's labelled events (``labelled``: which
    events have a label; ``None`` when all have one)."""
    if labelled is None:
        return {name: predictions[name] for name in names}
    return {name: predictions[name][labelled] for name in names}


def labelled_mask(labels: Sequence[int | None]) -> np.ndarray | None:
    """Which events of ``labels`` (each event's, ``None`` for none) have one; ``None`` when all do."""
    if None not in labels:
        return None
    return np.array([label is not None for label in labels], dtype=bool)


def _take(parts: list[np.ndarray], count: int) -> np.ndarray:
    """The first ``count`` values of the arrays ``parts`` (which must hold them), removed from it."""
    joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
    parts[:] = [joined[count:]] if joined.size > count else []
    return joined[:count]
