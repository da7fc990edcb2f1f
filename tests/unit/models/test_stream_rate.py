"""The stream rate: the same feature for the LSTM and ``logreg_lags``, from earlier labels only,
given once a stream is keyed, kept by a checkpoint, refused when damaged."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_lstm.errors import CheckpointRejected, ConfigError
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.messages.events import Event
from stream_lstm.messages.stream_rate import (
    STREAM_RATE_FEATURE,
    StreamRate,
    check_stream_rate_half_life,
)
from stream_lstm.models.build import build_models, model_from_state
from stream_lstm.models.lag_logreg import LagLogisticRegression
from stream_lstm.offline.generator import temporal_stream

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LABELS = st.lists(st.sampled_from([None, 0, 1]), max_size=60)

#: Events of one to three keys, some without a label, in batches.
EVENTS = st.lists(
    st.builds(
        Event,
        key=st.sampled_from(["a", "b", "c"]),
        features=st.dictionaries(st.sampled_from(["x", "y"]), st.floats(-5, 5, allow_nan=False), max_size=2),
        label=st.sampled_from([None, 0, 1]),
    ),
    max_size=50,
)


def rates_by_loop(labels: list[int | None], half_life: float, start: float = 0.5) -> list[float]:
    """The rate before each event, one event at a time (the definition)."""
    step, rate, out = 1.0 - 0.5 ** (1.0 / half_life), start, []
    for label in labels:
        out.append(rate)
        if label is not None:
            rate += step * (label - rate)
    return out


@PROPERTY
@given(labels=LABELS, cut=st.integers(0, 60), half_life=st.sampled_from([1.0, 3.5, 14.0, 1e6]))
def test_the_rate_before_an_event_is_the_moving_average_of_the_labels_before_it(
    labels: list[int | None], cut: int, half_life: float
) -> None:
    rate = StreamRate(half_life)
    before, after = rate.before(labels)
    expected = rates_by_loop([*labels, None], half_life)
    np.testing.assert_allclose(before, expected[:-1], rtol=0, atol=1e-12)
    assert after == pytest.approx(expected[-1], abs=1e-12)
    # In two batches as in one: the second starts from the first's rate.
    first, middle = rate.before(labels[:cut])
    rate.learned(middle, ["k"])
    second, end = rate.before(labels[cut:])
    np.testing.assert_allclose(np.concatenate([first, second]), before, rtol=0, atol=1e-12)
    assert end == pytest.approx(after, abs=1e-12)
    assert ((before >= 0) & (before <= 1)).all()


def test_an_events_own_label_and_later_ones_do_not_change_its_rate() -> None:
    labels: list[int | None] = [1, 0, 1, 1, None, 0, 1]
    before, _ = StreamRate(4.0).before(labels)
    for t in range(len(labels)):
        flipped = [*labels[:t], *(None if v is None else 1 - v for v in labels[t:])]
        assert StreamRate(4.0).before(flipped)[0][: t + 1].tolist() == before[: t + 1].tolist()


@pytest.mark.parametrize("bad", [-1, 0.5, 1e7, math.nan, math.inf, True, "14"])
def test_a_half_life_outside_the_bounds_is_refused(bad: Any) -> None:
    with pytest.raises(ConfigError, match="stream_rate_half_life"):
        check_stream_rate_half_life(bad)
    with pytest.raises(ConfigError, match="stream_rate_half_life"):
        LSTMLearner(device="cpu", stream_rate_half_life=bad)
    with pytest.raises(ConfigError, match="stream_rate_half_life"):
        LagLogisticRegression(stream_rate_half_life=bad)


def lstm_rates(learner: LSTMLearner) -> np.ndarray | None:
    """The raw stream rate of each event of the batch the LSTM holds predicted (``None`` when
    it gives none)."""
    assert learner._pending is not None
    batch = learner._pending.batch
    column = learner.feature_columns.get(STREAM_RATE_FEATURE)
    if column is None:
        return None
    return batch.raw_features[:, batch.raw_columns.tolist().index(column)]


@PROPERTY
@given(events=EVENTS, batch_size=st.integers(1, 16))
def test_logreg_lags_gets_the_lstms_stream_rate(events: list[Event], batch_size: int) -> None:
    """Batch by batch, the two models give the rate from the same batch on, the same value to
    each event: the moving average of the earlier events' labels, once a batch learned left
    more than one key."""
    lstm = LSTMLearner(hidden_size=2, tbptt_steps=2, device="cpu")
    model = LagLogisticRegression()
    expected = rates_by_loop([e.label for e in events], lstm.stream_rate_half_life)
    keys: set[str] = set()
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        lstm.predict_batch(batch)
        model.predict_batch(batch)
        walk = model._walked
        assert walk is not None
        theirs = [x.get(STREAM_RATE_FEATURE) for x in walk.features]
        ours = lstm_rates(lstm)
        if len(keys) > 1:
            assert ours is not None
            np.testing.assert_allclose(ours, expected[start : start + len(batch)], rtol=0, atol=1e-12)
            assert theirs == ours.tolist()
        else:
            assert ours is None and theirs == [None] * len(batch)
        lstm.learn_batch(batch)
        model.learn_batch(batch)
        keys |= {e.key for e in batch}
    assert list(model.feature_names) == sorted(lstm.feature_columns, key=lstm.feature_columns.get)


def test_one_key_gets_no_stream_rate_and_learns_as_without_it() -> None:
    events = list(temporal_stream(300, n_keys=1, seed=1))
    predictions = {}
    for half_life in (0.0, 14.0):
        lstm = LSTMLearner(hidden_size=4, tbptt_steps=3, device="cpu", stream_rate_half_life=half_life)
        out = []
        for start in range(0, len(events), 32):
            out.append(lstm.predict_batch(events[start : start + 32]))
            lstm.learn_batch(events[start : start + 32])
        predictions[half_life] = np.concatenate(out)
        assert STREAM_RATE_FEATURE not in lstm.feature_columns
    np.testing.assert_array_equal(predictions[0.0], predictions[14.0])


def stream(model: Any, events: list[Event], batch_size: int = 16) -> None:
    for start in range(0, len(events), batch_size):
        model.predict_batch(events[start : start + batch_size])
        model.learn_batch(events[start : start + batch_size])


@pytest.mark.parametrize("kind", ["lstm", "logreg_lags"])
def test_a_checkpoint_keeps_the_rate_and_old_states_load_without_it(kind: str) -> None:
    events = list(temporal_stream(400, n_keys=4, seed=7))

    def new(**kwargs: Any) -> Any:
        if kind == "lstm":
            return LSTMLearner(hidden_size=4, tbptt_steps=3, device="cpu", **kwargs)
        return LagLogisticRegression(**kwargs)

    def load(state: Any) -> Any:
        return (
            LSTMLearner.from_state(state, "learner") if kind == "lstm" else model_from_state(state, "model")
        )

    model = new()
    stream(model, events[:300])
    assert model.stream_rate.applies and model.stream_rate.value != 0.5
    copy = load(model.to_state())
    assert (copy.stream_rate.value, copy.stream_rate.keyed) == (model.stream_rate.value, True)
    batch = events[300:340]
    np.testing.assert_array_equal(copy.predict_batch(batch), model.predict_batch(batch))

    # A state written before the stream rate: a model without it.
    old_model = new(stream_rate_half_life=0)
    stream(old_model, events[:300])
    old = old_model.to_state()
    del old["stream_rate"]
    if kind == "lstm":
        del old["hyperparameters"]["stream_rate_half_life"]
    else:
        del old["stream_rate_half_life"]
    loaded = load(old)
    assert loaded.stream_rate.half_life == 0 and not loaded.stream_rate.applies
    np.testing.assert_array_equal(loaded.predict_batch(batch), old_model.predict_batch(batch))


@pytest.mark.parametrize("kind", ["lstm", "logreg_lags"])
@pytest.mark.parametrize(
    "damage",
    [
        {"rate": 1.5, "keyed": True, "first_key": None},
        {"rate": -0.1, "keyed": True, "first_key": None},
        {"rate": math.nan, "keyed": True, "first_key": None},
        {"rate": "0.5", "keyed": True, "first_key": None},
        {"rate": 0.5, "keyed": 1, "first_key": None},
        {"rate": 0.5, "keyed": True},
        {"rate": 0.5, "keyed": True, "first_key": "a"},
        {"rate": 0.5, "keyed": False, "first_key": 3},
        None,
        0.5,
    ],
)
def test_a_damaged_rate_is_refused(kind: str, damage: Any) -> None:
    events = list(temporal_stream(100, n_keys=3, seed=2))
    model = (
        LSTMLearner(hidden_size=4, tbptt_steps=3, device="cpu") if kind == "lstm" else LagLogisticRegression()
    )
    stream(model, events)
    state = model.to_state()
    state["stream_rate"] = damage
    with pytest.raises(CheckpointRejected, match="stream_rate"):
        if kind == "lstm":
            LSTMLearner.from_state(state, "learner")
        else:
            model_from_state(state, "model")


def test_an_events_feature_of_the_rates_name_is_dropped_by_every_model() -> None:
    """The name is reserved: before the rate applies and after, no producer's value reaches the
    rate's column or its statistics (a value of 1e9 there would flatten the standardised rate)."""
    events = [
        dataclasses.replace(
            e, key="a" if i < 64 else e.key, features={**e.features, STREAM_RATE_FEATURE: 1e9}
        )
        for i, e in enumerate(temporal_stream(400, n_keys=3, seed=4))
    ]
    clean = [
        dataclasses.replace(e, features={n: v for n, v in e.features.items() if n != STREAM_RATE_FEATURE})
        for e in events
    ]
    models = build_models(
        ["lstm", "logreg", "logreg_lags"], lstm={"hidden_size": 2, "tbptt_steps": 2, "device": "cpu"}
    )
    reference = build_models(
        ["lstm", "logreg", "logreg_lags"], lstm={"hidden_size": 2, "tbptt_steps": 2, "device": "cpu"}
    )
    for start in range(0, 400, 32):
        for group, stream_of in ((models, events), (reference, clean)):
            for model in group.values():
                batch = stream_of[start : start + 32]
                model.predict_batch(batch)
                model.learn_batch(batch)
    for name, model in models.items():
        assert model.features_dropped == 400, name
        assert reference[name].features_dropped == 0, name
        batch = events[350:380]
        np.testing.assert_array_equal(
            model.predict_batch(batch), reference[name].predict_batch(clean[350:380])
        )
    assert models["lstm"].stream_rate.applies and STREAM_RATE_FEATURE in models["lstm"].feature_columns


def test_a_key_predicted_and_not_learned_does_not_make_a_stream_keyed() -> None:
    lstm, model = LSTMLearner(hidden_size=2, tbptt_steps=2, device="cpu"), LagLogisticRegression()
    for m in (lstm, model):
        m.predict_batch([Event(key="b", label=1)])  # never learned
        for _ in range(3):
            batch = [Event(key="a", features={"x": 1.0}, label=1)] * 4
            m.predict_batch(batch)
            m.learn_batch(batch)
        m.learn_batch([])
        assert not m.stream_rate.keyed and m.stream_rate.first_key == "a"
        m.predict_batch([Event(key="b", label=0)])
        m.learn_batch([Event(key="b", label=0)])
        assert m.stream_rate.applies
    assert lstm.stream_rate.value == model.stream_rate.value


@pytest.mark.parametrize("kind", ["lstm", "logreg_lags"])
def test_a_checkpoint_with_only_one_of_the_rate_and_its_half_life_is_refused(kind: str) -> None:
    events = list(temporal_stream(100, n_keys=3, seed=2))
    model = (
        LSTMLearner(hidden_size=4, tbptt_steps=3, device="cpu") if kind == "lstm" else LagLogisticRegression()
    )
    stream(model, events)
    without_rate, without_half_life = model.to_state(), model.to_state()
    del without_rate["stream_rate"]
    if kind == "lstm":
        del without_half_life["hyperparameters"]["stream_rate_half_life"]
    else:
        del without_half_life["stream_rate_half_life"]
    for state in (without_rate, without_half_life):
        with pytest.raises(CheckpointRejected):
            LSTMLearner.from_state(state, "learner") if kind == "lstm" else model_from_state(state, "model")
