"""The online LSTM as a river classifier: ``from stream_lstm import LSTMClassifier``.

:class:`LSTMClassifier` is the service's learner
(:class:`~stream_lstm.learner.lstm_learner.LSTMLearner`, whose event-batch methods the service
and ``stream-lstm evaluate`` call) with river's methods added, so that the object a user drops
into a river pipeline or ``river.evaluate.progressive_val_score`` is the one the service builds,
checkpoints and restores. River's rows become events as :mod:`stream_lstm.api.rows` says;
predictions run on copies of the key states (:mod:`stream_lstm.api.row_states`), so that
predicting changes nothing the model has learned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

import numpy as np
from river import base

from stream_lstm.api.row_states import row_copies, row_keys
from stream_lstm.api.rows import RowReader
from stream_lstm.learner.limits import DEFAULT_BASE_RATE_ODDS, DEFAULT_LR_BOOST_HALF_LIFE
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.messages.categories import DEFAULT_CATEGORY_BUCKETS
from stream_lstm.messages.events import Event
from stream_lstm.messages.stream_rate import DEFAULT_STREAM_RATE_HALF_LIFE
from stream_lstm.messages.trend_scales import DEFAULT_TREND_SCALES

if TYPE_CHECKING:
    import pandas as pd

#: Rows predicted in one forward pass by :meth:`LSTMClassifier.predict_proba_many` (each holds a
#: copy of its key's state while it is predicted).
PREDICT_ROWS = 4096


class LSTMClassifier(LSTMLearner, base.MiniBatchClassifier):
    """An online LSTM binary classifier with a state per entity key, for river and for the service.

    Weights are shared by all keys; each key (a device, a user, a sensor: whatever the field
    named by ``key_field`` holds) has its own recurrent state, so the prediction for a row
    depends on the earlier rows of its key. Without ``key_field`` all rows form one sequence.

    River's methods take rows as dicts (``x``) or DataFrames (``X``): numbers are features,
    booleans 0/1, strings categories (hashed into ``category_buckets`` inputs), ``None`` a missing
    value; the ``key_field`` and ``ts_field`` columns are the key and the event time (a number of
    seconds, a ``datetime`` or an ISO-8601 string), not features. A value the service would
    refuse in a message (a non-finite number, a magnitude over 1e18, another type) is a
    ``ValueError`` (:class:`~stream_lstm.errors.EventError`).

    * :meth:`learn_one` learns one row: ``steps_per_batch`` optimizer steps on it, and its key's
      state moves on.
    * :meth:`learn_many` learns a DataFrame's rows, in order, as one micro-batch:
      ``steps_per_batch`` optimizer steps on the batch (the service's unit of learning; the service
      also sets ``extra_step_events``, below), every key moved past its rows.
    * :meth:`predict_proba_one` gives ``{False: 1 - p, True: p}``, where ``p`` is the
      probability that the label is 1 given the earlier rows of the key. Labels may be given as
      ``True``/``False`` or 1/0: the two are equal in Python, so ``proba[1]`` is ``proba[True]``
      and ``predict_one`` returns ``True`` where the label would be 1.
    * :meth:`predict_proba_many` and :meth:`predict_many` predict each row as
      :meth:`predict_proba_one` would: as the next row of its key, from what was learned before
      the call (rows of one key in the DataFrame do not see each other; learning them is what
      moves a key on).

    Predicting never changes the model. The service's event methods (``predict_batch`` then
    ``learn_batch`` on the same :class:`~stream_lstm.messages.events.Event` batch) are there
    too; pickling and ``copy.deepcopy`` go through the model's data form (no pickle is ever read
    from a file: save a model with :meth:`to_state` and the checkpoint codec, see
    docs/python-api.md).

    Parameters
    ----------
    hidden_size, tbptt_steps, learning_rate, lr_boost_half_life, clip_grad_norm, steps_per_batch,
    extra_step_events, base_rate_odds, input_clip, max_keys, max_features, adapt_scaler, device,
    seed, category_buckets, trend_scales, stream_rate_half_life
        The learner's hyperparameters (see :class:`~stream_lstm.learner.lstm_learner.LSTMLearner`).
        ``extra_step_events`` is 0 here, where the service's default is 5,000: the early extra
        step makes up for the steps a micro-batch of 64 does not take, and :meth:`learn_one`
        learns one row at a time (measured at batch 1 with one step per event, a second step on each
        of a stream's first 5,000 events lowered accuracy in 11 of 12 runs, by up to 23 points).
        Set it when learning with :meth:`learn_many`.
    key_field
        The field of ``x`` holding the entity key (a string or an integer); ``None``: one stream.
    ts_field
        The field of ``x`` holding the event time; ``None``: rows have no time. The log of the
        time since the key's previous row is one of the LSTM's inputs.

    Examples
    --------
    Two interleaved devices: each one's label is its previous feature's sign, so only the
    state of its own key can tell.

    >>> model = LSTMClassifier(hidden_size=8, tbptt_steps=4, device="cpu", key_field="device")
    >>> model.learn_one({"device": "a", "x": 1.0}, True)
    >>> model.learn_one({"device": "b", "x": -1.0}, 0)
    >>> proba = model.predict_proba_one({"device": "a", "x": 0.5})
    >>> sorted(proba), round(sum(proba.values()), 6)
    ([False, True], 1.0)
    >>> model.predict_one({"device": "a", "x": 0.5}) in (True, False)
    True
    """

    def __init__(
        self,
        *,
        hidden_size: int = 32,
        tbptt_steps: int = 8,
        learning_rate: float = 0.01,
        lr_boost_half_life: float = DEFAULT_LR_BOOST_HALF_LIFE,
        clip_grad_norm: float = 1.0,
        steps_per_batch: int = 2,
        extra_step_events: int = 0,
        base_rate_odds: float = DEFAULT_BASE_RATE_ODDS,
        input_clip: float = 10.0,
        max_keys: int = 100_000,
        max_features: int = 32,
        adapt_scaler: bool = True,
        device: str = "auto",
        seed: int = 0,
        category_buckets: int = DEFAULT_CATEGORY_BUCKETS,
        trend_scales: int = DEFAULT_TREND_SCALES,
        stream_rate_half_life: float = DEFAULT_STREAM_RATE_HALF_LIFE,
        key_field: str | None = None,
        ts_field: str | None = None,
    ) -> None:
        self._rows = RowReader(key_field, ts_field)  # checks the field names first: it builds nothing
        self.key_field = key_field
        self.ts_field = ts_field
        super().__init__(
            hidden_size=hidden_size,
            tbptt_steps=tbptt_steps,
            learning_rate=learning_rate,
            lr_boost_half_life=lr_boost_half_life,
            clip_grad_norm=clip_grad_norm,
            steps_per_batch=steps_per_batch,
            extra_step_events=extra_step_events,
            base_rate_odds=base_rate_odds,
            input_clip=input_clip,
            max_keys=max_keys,
            max_features=max_features,
            adapt_scaler=adapt_scaler,
            device=device,
            seed=seed,
            category_buckets=category_buckets,
            trend_scales=trend_scales,
            stream_rate_half_life=stream_rate_half_life,
        )

    # ------------------------------------------------------------------ river: one row

    def learn_one(self, x: dict[Any, Any], y: Any) -> None:
        """Learn the row ``x`` with the label ``y`` (``True``/``False``, 1/0, or ``None`` to move its
        key on without learning): ``steps_per_batch`` optimizer steps on it (one more early in a
        stream, if ``extra_step_events`` is set)."""
        self.learn_batch([self._rows.event(x, y)])

    def predict_proba_one(self, x: dict[Any, Any], **kwargs: Any) -> dict[bool, float]:
        """``{False: 1 - p, True: p}``: ``p`` is the probability that the label of ``x`` is 1, given
        the earlier rows of its key. Changes nothing in the model."""
        p = float(self._predict_rows([self._rows.event(x)])[0])
        return {False: 1.0 - p, True: p}

    def predict_one(self, x: dict[Any, Any], **kwargs: Any) -> bool:
        """The likelier label of ``x`` (``False`` on a tie, as river's ``max`` over the
        probabilities would pick it)."""
        return bool(self._predict_rows([self._rows.event(x)])[0] > 0.5)

    # ------------------------------------------------------------------ river: mini-batches

    def learn_many(self, X: pd.DataFrame, y: pd.Series) -> None:
        """Learn the rows of ``X`` in order, labelled by ``y`` (by position; a missing label is none),
        as one micro-batch: ``steps_per_batch`` optimizer steps on all of them together (one more
        early in a stream, if ``extra_step_events`` is set)."""
        self.learn_batch(self._rows.events(X, y))

    def predict_proba_many(self, X: pd.DataFrame) -> pd.DataFrame:
        """Columns ``False`` and ``True`` (indexed like ``X``): each row predicted as
        :meth:`predict_proba_one` would predict it. Changes nothing in the model."""
        import pandas as pd

        p = self._predict_rows(self._rows.events(X))
        return pd.DataFrame({False: 1.0 - p, True: p}, index=X.index)

    def predict_many(self, X: pd.DataFrame) -> pd.Series:
        """The likelier label of each row of ``X`` (see :meth:`predict_one`)."""
        import pandas as pd

        return pd.Series(self._predict_rows(self._rows.events(X)) > 0.5, index=X.index, dtype=bool)

    def _predict_rows(self, events: Sequence[Event]) -> np.ndarray:
        """P(label = 1) of each event as the next of its key, leaving the learner as it was.

        Each block of rows runs on a store of copies of its keys' states (``row_copies``), and
        the feature layout is put back afterwards: a name first met here must not take a column
        that the next learned name would have taken.
        """
        self._check_no_pending()
        probabilities = np.empty(len(events))
        for start in range(0, len(events), PREDICT_ROWS):
            block = events[start : start + PREDICT_ROWS]
            rows = [
                dataclasses.replace(event, key=key)
                for event, key in zip(block, row_keys(len(block)), strict=True)
            ]
            store, columns, dropped = self.keys, self.feature_columns, self.features_dropped
            self.keys, self.feature_columns = row_copies(store, [event.key for event in block]), dict(columns)
            try:
                probabilities[start : start + len(block)] = self.predict_batch(rows)
            finally:
                self._pending = None
                self.keys, self.feature_columns, self.features_dropped = store, columns, dropped
        return probabilities

    # ------------------------------------------------------------------ river's conventions

    @classmethod
    def _unit_test_params(cls) -> Any:
        """Small models for river's estimator checks (on the CPU: they learn one row at a time)."""
        yield {"hidden_size": 8, "tbptt_steps": 4, "device": "cpu"}
        yield {"hidden_size": 4, "tbptt_steps": 1, "max_features": 4, "category_buckets": 0, "device": "cpu"}

    def _unit_test_skips(self) -> set[str]:
        """River's checks this model does not pass, and why.

        ``check_learn_many_matches_learn_one``: :meth:`learn_many` takes its optimizer steps on
        the whole batch and standardises the batch's features with the statistics from before
        it, where a loop of :meth:`learn_one` takes them per row; the reason river gives for
        its own gradient-descent linear models. What does hold (the key states a batch leaves
        equal those of the rows learned one by one, when no step is taken) is tested apart.
        """
        return {"check_learn_many_matches_learn_one"}

    # ------------------------------------------------------------------ data form

    @classmethod
    def from_state(
        cls, tree: Any, where: str, *, key_field: str | None = None, ts_field: str | None = None
    ) -> Self:
        """The classifier of a :meth:`to_state` (which holds the learner, not the field names: give
        them again); :class:`~stream_lstm.errors.CheckpointRejected` if ``tree`` is not one."""
        rows = RowReader(key_field, ts_field)
        classifier = super().from_state(tree, where)
        classifier._rows, classifier.key_field, classifier.ts_field = rows, key_field, ts_field
        return classifier

    def __getstate__(self) -> dict[str, Any]:
        return {"learner": super().__getstate__(), "key_field": self.key_field, "ts_field": self.ts_field}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state["learner"])
        self.key_field, self.ts_field = state["key_field"], state["ts_field"]
        self._rows = RowReader(self.key_field, self.ts_field)
