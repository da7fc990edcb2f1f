"""The ``mix`` model: an online mixture of the other models' probabilities, by fixed share.

:class:`FixedShareMixture` is the exponentially weighted forecaster with fixed share of Herbster
and Warmuth ("Tracking the best expert", Machine Learning 32, 1998). Each expert (a model of
``--models``) has a weight; the mixture predicts the weighted mean of the experts' probabilities.
After a batch's labels are known, each weight is multiplied by ``exp(-eta * loss)`` with the
expert's log loss on the batch, the weights are normalised, and then a share ``alpha`` of the
total is spread evenly over all experts, so that an expert that lost for a long time can win
again quickly when the best model changes.

Log loss is exp-concave with ``eta = 1``: then, for one event at a time, the mixture's log loss
is at most the best expert's plus ``ln(N) / eta`` in total (``N`` experts), plus the share's cost
of about ``ln(1 / alpha)`` per change of the best expert and ``alpha`` per event in between.

The prequential rule holds by construction: :meth:`FixedShareMixture.predict` uses the weights
as they stand, and only :meth:`FixedShareMixture.learn` (after a batch is scored) moves them.
The weights change between micro-batches only, as the evaluator predicts a whole batch before it
learns any of it: a batch's loss is the sum of its events' losses (with ``alpha = 0`` this gives
the same weights as an update per event), and the share is applied once per batch, as
``1 - (1 - alpha) ** n`` for a batch of ``n`` labelled events.

Besides the models, the mixture has an expert of its own, :data:`BASE_RATE`: the rate of positive
labels so far (the Krichevsky-Trofimov estimate ``(positives + 1/2) / (labelled + 1)``). On a
stream without signal no model can beat it, and the bound above keeps the mixture within
``ln(N) / labelled`` plus the share's cost of it, whatever the models do.

The experts' probabilities are clipped to ``[clip, 1 - clip]`` (no-change predicts exactly 0 or
1, whose log loss would be infinite) and a non-finite one counts as 0.5, for the prediction and
the loss alike.

>>> mixture = FixedShareMixture(["good", "bad"], base_rate=False)
>>> mixture.weights.tolist()
[0.5, 0.5]
>>> mixture.predict({"good": np.array([0.9]), "bad": np.array([0.1])}).round(3).tolist()
[0.5]
>>> mixture.learn(np.array([1, 1, 1]), {"good": np.array([0.9] * 3), "bad": np.array([0.1] * 3)})
>>> mixture.weights.round(3).tolist()
[0.997, 0.003]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream_lstm.errors import ConfigError
from stream_lstm.models.state_data import Fields, State, damaged

#: The name of the mixture among the models (``--models``, scores, output records, metrics).
MIXTURE = "mix"
#: The mixture's own expert: the rate of positive labels so far.
BASE_RATE = "base_rate"

#: Default learning rate: log loss is exp-concave for ``eta = 1`` (the bound in the module doc).
ETA = 1.0
#: Default share per labelled event: about one change of the best model per 1,000 events is cheap
#: (see docs/evaluation.md for what it gives on Elec2).
SHARE = 1e-3
#: Default clip of the experts' probabilities: a confident miss costs at most ln(1 / CLIP) = 9.2.
CLIP = 1e-4


class FixedShareMixture:
    """Mixes the probabilities of ``experts`` (model names) by their past log loss, with fixed share.

    Parameters
    ----------
    experts
        The names of the mixed models, in order.
    eta
        Learning rate of the exponential weights (1 suits log loss, see the module doc).
    share
        Fixed share ``alpha`` per labelled event, in ``[0, 1)``; 0 gives plain exponential weights,
        which cannot follow a best model that changes.
    clip
        The experts' probabilities are clipped to ``[clip, 1 - clip]``.
    base_rate
        Mix in :data:`BASE_RATE` too, the rate of positive labels so far.
    """

    def __init__(
        self,
        experts: Sequence[str],
        *,
        eta: float = ETA,
        share: float = SHARE,
        clip: float = CLIP,
        base_rate: bool = True,
    ) -> None:
        if not experts or len(set(experts)) != len(experts) or BASE_RATE in experts:
            raise ConfigError(f"the mixture needs distinct models to mix, got {list(experts)}")
        if not (math.isfinite(eta) and eta > 0):
            raise ConfigError(f"the mixture's eta must be a positive number, got {eta}")
        if not 0 <= share < 1:
            raise ConfigError(f"the mixture's share must be in [0, 1), got {share}")
        if not 0 < clip < 0.5:
            raise ConfigError(f"the mixture's clip must be in (0, 0.5), got {clip}")
        self.experts = tuple(experts)
        self.eta = float(eta)
        self.share = float(share)
        self.clip = float(clip)
        self.base_rate = base_rate
        #: Every expert the weights are of: the models, then :data:`BASE_RATE` with ``base_rate``.
        self.names = (*self.experts, *((BASE_RATE,) if base_rate else ()))
        self.weights = np.full(len(self.names), 1.0 / len(self.names))
        self.positives = 0
        self.labelled = 0

    def predict(self, probabilities: Mapping[str, np.ndarray]) -> np.ndarray:
        """P(label = 1) for each event: the experts' probabilities weighted by the current weights."""
        return np.clip(self._matrix(probabilities) @ self.weights, self.clip, 1.0 - self.clip)

    def learn(self, labels: np.ndarray, probabilities: Mapping[str, np.ndarray]) -> None:
        """Move the weights by the experts' log loss on labelled events (``labels`` of 0 and 1)."""
        if labels.size == 0:
            return
        matrix = self._matrix(probabilities)
        chosen = np.where(labels[:, None] == 1, matrix, 1.0 - matrix)
        losses = -np.log(chosen).sum(axis=0)
        with np.errstate(divide="ignore"):  # a weight of 0 (only with share 0) stays 0
            logs = np.log(self.weights) - self.eta * losses
        updated = np.exp(logs - logs.max())
        updated /= updated.sum()
        alpha = 1.0 - (1.0 - self.share) ** labels.size
        self.weights = (1.0 - alpha) * updated + alpha / len(self.names)
        self.positives += int((labels == 1).sum())
        self.labelled += int(labels.size)

    def weights_by_expert(self) -> dict[str, float]:
        """The current weight of each expert, by name (they sum to one)."""
        return dict(zip(self.names, self.weights.tolist(), strict=True))

    def _matrix(self, probabilities: Mapping[str, np.ndarray]) -> np.ndarray:
        """Events by experts (:attr:`names`), clipped, a non-finite probability as 0.5."""
        columns = [np.asarray(probabilities[name], dtype=np.float64) for name in self.experts]
        if self.base_rate:
            columns.append(np.full(columns[0].shape, (self.positives + 0.5) / (self.labelled + 1)))
        matrix = np.column_stack(columns)
        matrix = np.where(np.isfinite(matrix), matrix, 0.5)
        return np.clip(matrix, self.clip, 1.0 - self.clip)

    def to_state(self) -> State:
        """The mixture as data (:mod:`stream_lstm.models.state_data`)."""
        return {
            "experts": list(self.experts),
            "eta": self.eta,
            "share": self.share,
            "clip": self.clip,
            "base_rate": self.base_rate,
            "weights": self.weights.copy(),
            "positives": self.positives,
            "labelled": self.labelled,
        }

    @classmethod
    def from_state(cls, tree: Any, where: str) -> FixedShareMixture:
        """The mixture of a :meth:`to_state` (:class:`~stream_lstm.errors.CheckpointRejected` if
        ``tree`` is not one)."""
        fields = Fields(tree, where, _MIXTURE_FIELDS)
        experts = fields.strings("experts")
        if not experts:
            raise damaged(fields.path("experts"), "no expert")
        try:
            mixture = cls(
                experts,
                eta=fields.float("eta", low=0.0),
                share=fields.float("share", low=0.0, high=1.0),
                clip=fields.float("clip", low=0.0, high=0.5),
                base_rate=fields.bool("base_rate"),
            )
        except ConfigError as error:
            raise damaged(where, str(error)) from None
        mixture.labelled = fields.int("labelled")
        mixture.positives = fields.int("positives", high=mixture.labelled)
        weights = fields.array("weights", "float64", (len(mixture.names),))
        if not (np.isfinite(weights).all() and (weights >= 0).all() and abs(weights.sum() - 1.0) < 1e-6):
            raise damaged(fields.path("weights"), "the weights are not non-negative numbers summing to one")
        mixture.weights = weights / weights.sum()
        return mixture


_MIXTURE_FIELDS = ("experts", "eta", "share", "clip", "base_rate", "weights", "positives", "labelled")
