"""The LSTM's probabilities averaged with the base rate, so that on a stream without signal it
forecasts about as well as the rate of positive labels, and elsewhere exactly as the network does.

Two models of the labels: the network, and the base rate (the rate of positive labels so far, the
Krichevsky-Trofimov estimate ``(positives + 1/2) / (labelled + 1)``, the mixture's
:data:`~stream_lstm.evaluation.mixture.BASE_RATE` too). :class:`BaseRateAverage` is their Bayesian
model average: the log-odds of the network are the prior log-odds ``odds`` (in nats) plus its
log-likelihood lead over the base rate on the labelled events so far, and the LSTM predicts
``w p + (1 - w) r``, with the network's posterior weight ``w = sigmoid(log-odds)``, its
probability ``p`` and the rate ``r``.

* Where the network beats the base rate (every stream with signal) its lead grows by tenths of a
  nat per event, ``w`` rounds to exactly 1 once the log-odds pass about 37, and the network's
  probabilities pass unchanged.
* On a stream without signal the network's probabilities scatter around the base rate and lose
  to it by a few thousandths of a nat per event (noise fitted as signal): once the base rate
  leads by ``odds`` nats, its weight passes the network's, and the LSTM's log loss comes down to
  about the base rate's.

The prior odds keep the network through a stream's first events, where it trails the base rate
while it learns (by up to 14 nats on the quality suite). Memory is bounded, as fixed share bounds
the mixture's: the log-odds never fall below :data:`LOG_ODDS_FLOOR` (the base rate's weight stops
at 1 - 4.5e-5), so a network that finds signal later is back at even odds within 10 nats of
gains; and the lead counts up to :data:`LEAD_CAP` only, so a network that loses its signal gives
way to the base rate within ``LEAD_CAP + odds`` nats.

A Bayesian average ends on whichever model is better: it does not shrink a network that has
signal but is overconfident (no model here recalibrates the network), and the rate never forgets,
so on a stream without signal whose rate drifts it is the rate of the whole stream so far.

Prequential: a batch is predicted with the weight that earlier batches left; :meth:`learn` moves
it once the batch's labels are known, from the network's probabilities of the batch, clipped to
``[CLIP, 1 - CLIP]`` there (as the mixture clips), so that one confident miss costs the network at
most ln(1 / CLIP) = 9.2 nats of its lead. It learns with the average off too (``odds`` 0), so
that turning it on later starts from the stream's rate and the network's record.

>>> average = BaseRateAverage(10.0)
>>> round(average.network_weight(), 5)
0.99995
>>> for _ in range(100):  # a network that says 0.9 where the labels are a coin toss
...     average.learn(np.array([1.0, 0.0]), np.array([0.9, 0.9]))
>>> round(average.network_weight(), 5), round(average.rate, 3)  # the log-odds stop at -10
(5e-05, 0.5)
>>> average.blend(np.array([0.9])).round(3).tolist()
[0.5]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stream_lstm.learner.limits import check_base_rate_odds
from stream_lstm.models.state_data import Fields, State, checked_int

#: The network's probabilities are clipped to ``[CLIP, 1 - CLIP]`` in its log-likelihood.
CLIP = 1e-4
#: The most nats the network's lead counts up to: beyond 37 its weight is 1 in float64 anyway.
LEAD_CAP = 40.0
#: The lowest log-odds of the network: the base rate's weight stops at 1 - sigmoid(-10) = 1 - 4.5e-5.
LOG_ODDS_FLOOR = -10.0
#: The most labelled events counted (about 10^15: a million a second for 35 years), so that the
#: rate stays strictly between 0 and 1 in float64; a checkpoint claiming more is damaged.
MAX_LABELLED = 2**50


class BaseRateAverage:
    """The average of the network's probabilities and the base rate, by their past likelihood.

    ``odds``: the prior log-odds of the network, in nats; 0 turns the average off (the network's
    probabilities as they are; the record is kept all the same).
    """

    def __init__(self, odds: float, *, lead: float = 0.0, positives: int = 0, labelled: int = 0) -> None:
        self.odds = check_base_rate_odds(odds)
        #: The network's log-likelihood less the base rate's, in nats, on the labelled events so far.
        self.lead = lead
        self.positives = positives
        self.labelled = labelled

    @property
    def rate(self) -> float:
        """The base rate: the rate of positive labels so far (Krichevsky-Trofimov)."""
        return (self.positives + 0.5) / (self.labelled + 1)

    def network_weight(self) -> float:
        """The network's posterior weight (1 when the average is off)."""
        if not self.odds:
            return 1.0
        log_odds = self.odds + self.lead
        if log_odds >= 0:
            return 1.0 / (1.0 + math.exp(-log_odds))
        odds = math.exp(log_odds)
        return odds / (1.0 + odds)

    def blend(self, probabilities: np.ndarray) -> np.ndarray:
        """The LSTM's probabilities: the network's ``probabilities`` averaged with the base rate."""
        weight = self.network_weight()
        if weight == 1.0:
            return probabilities
        return weight * probabilities + (1.0 - weight) * self.rate

    def learn(self, labels: np.ndarray, probabilities: np.ndarray) -> None:
        """Move the weight by the batch: ``labels`` of its events (NaN: none) and the network's
        ``probabilities`` of them, as predicted before the batch was learned."""
        known = ~np.isnan(labels)
        if not known.all():  # as a rule every event has one: no copies then
            labels, probabilities = labels[known], probabilities[known]
        positive = labels == 1
        count = int(positive.size)
        if not count:
            return
        # np.clip's result, with less overhead per call.
        clipped = np.minimum(np.maximum(probabilities, CLIP), 1.0 - CLIP)
        network = float(np.log(np.where(positive, clipped, 1.0 - clipped)).sum())
        positives = int(np.count_nonzero(positive))
        rate = self.rate
        base = positives * math.log(rate) + (count - positives) * math.log1p(-rate)
        self.lead = min(max(self.lead + network - base, self.lowest_lead()), LEAD_CAP)
        self.positives += positives
        self.labelled = min(self.labelled + count, MAX_LABELLED)
        self.positives = min(self.positives, self.labelled)

    def lowest_lead(self) -> float:
        """The lowest lead kept: where the log-odds reach :data:`LOG_ODDS_FLOOR`."""
        return LOG_ODDS_FLOOR - self.odds

    def with_odds(self, odds: float) -> BaseRateAverage:
        """This average under other prior ``odds`` (a setting changed on resume), its lead
        brought within their bounds."""
        changed = BaseRateAverage(odds, lead=self.lead, positives=self.positives, labelled=self.labelled)
        changed.lead = max(self.lead, changed.lowest_lead())
        return changed

    def to_state(self) -> State:
        """The average's learned state (its ``odds`` is a hyperparameter, stored with the others)."""
        return {"lead": self.lead, "positives": self.positives, "labelled": self.labelled}

    @classmethod
    def from_state(cls, tree: Any, where: str, odds: float) -> BaseRateAverage:
        """The average of a :meth:`to_state` with prior ``odds``;
        :class:`~stream_lstm.errors.CheckpointRejected` if ``tree`` is not one."""
        fields = Fields(tree, where, ("lead", "positives", "labelled"))
        labelled = fields.int("labelled", high=MAX_LABELLED)
        positives = checked_int(fields.raw("positives"), fields.path("positives"), high=labelled)
        average = cls(odds, positives=positives, labelled=labelled)
        average.lead = fields.float("lead", low=average.lowest_lead(), high=LEAD_CAP)
        return average


#: The state of a learner written before the average existed: nothing learned yet.
NO_BASE_RATE_STATE = BaseRateAverage(0.0).to_state()
