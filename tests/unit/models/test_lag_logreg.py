"""``logreg_lags``: the LSTM's inputs (same previous label, same time gap), lags from earlier
events of the key only, its state as data, its keys moved and bounded, hostile values survive."""

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
from stream_lstm.messages.trend_scales import trend_rates
from stream_lstm.models.build import build_models, model_from_state
from stream_lstm.models.lag_history import histories_to_state, trend_input
from stream_lstm.models.lag_logreg import (
    GAP,
    NO_PREVIOUS_LABEL,
    PREVIOUS_LABEL,
    LagLogisticRegression,
    lag_feature_input,
    lag_label_input,
)
from stream_lstm.offline.generator import temporal_stream
from stream_lstm.state.codec import decode_tree, encode_tree
from stream_lstm.state.state_tree import PARTITION, state_to_tree, tree_to_state
from stream_lstm.state.store import PartitionState

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Events of a few keys, with or without a time (times go back too) and a label, in batches.
EVENTS = st.lists(
    st.builds(
        Event,
        key=st.sampled_from(["a", "b", "c"]),
        ts=st.one_of(st.none(), st.floats(-100, 100, allow_nan=False).map(lambda t: round(t, 2))),
        features=st.dictionaries(st.sampled_from(["x", "y"]), st.floats(-5, 5, allow_nan=False), max_size=2),
        label=st.sampled_from([None, 0, 1]),
    ),
    max_size=40,
)


def learned(events: list[Event], batch_size: int = 8, **kwargs: Any) -> LagLogisticRegression:
    model = LagLogisticRegression(**kwargs)
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        model.predict_batch(batch)
        model.learn_batch(batch)
    return model


def reloaded(model: LagLogisticRegression) -> Any:
    _, tree = decode_tree(encode_tree(model.to_state(), "model"), "checkpoint", ("model",))
    return model_from_state(tree, "checkpoint")


@PROPERTY
@given(events=EVENTS, batch_size=st.integers(1, 16))
def test_previous_label_and_time_gap_are_the_lstms(events: list[Event], batch_size: int) -> None:
    """Batch by batch, each event's previous label, its flag and its raw log time gap are those
    the LSTM encodes for it (the LSTM's own encoding of the same batch)."""
    lstm = LSTMLearner(hidden_size=2, tbptt_steps=2, device="cpu")
    model = LagLogisticRegression()
    n = lstm.max_features
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        contexts = model.contexts(batch)
        lstm.predict_batch(batch)
        assert lstm._pending is not None
        encoded = lstm._pending.batch
        previous = [0.0 if c.previous_label is None else 2.0 * c.previous_label - 1 for c in contexts]
        np.testing.assert_array_equal(encoded.inputs[:, n + 1], previous)
        np.testing.assert_array_equal(encoded.inputs[:, n + 2], [c.previous_label is None for c in contexts])
        np.testing.assert_allclose(encoded.raw_features[:, -1], [c.gap for c in contexts], rtol=1e-12)
        model.predict_batch(batch)
        model.learn_batch(batch)
        lstm.learn_batch(batch)
    assert set(model.tracked_keys()) == set(lstm.tracked_keys())


def test_the_lags_are_the_earlier_events_of_the_key_newest_first() -> None:
    model = LagLogisticRegression(lags=2)
    model.learn_batch([Event(key="z", features={"x": float(v)}, label=v % 2) for v in range(8)])

    def scaled(value: float) -> dict[str, float]:  # as predicted from, before the batch is learned
        return model._clip(model.scaler.transform_one({"x": value}))

    batch = [
        Event(key="a", features={"x": 1.0}, label=1),
        Event(key="b", features={"x": 2.0}, label=0),
        Event(key="a", features={"x": 3.0}),
        Event(key="a", features={"x": 4.0}, label=0),
        Event(key="a", features={"x": 5.0}, label=1),
    ]
    expected = {v: scaled(v) for v in (1.0, 3.0, 4.0, 5.0)}
    assert len(set(map(str, expected.values()))) == 4  # the scaler tells the values apart
    lags = [context.lags for context in model.contexts(batch)]
    assert lags == [
        (),
        (),
        ((expected[1.0], 1),),
        ((expected[3.0], None), (expected[1.0], 1)),
        ((expected[4.0], 0), (expected[3.0], None)),
    ]
    model.learn_batch(batch)  # the next batch continues from the learned histories
    assert model.contexts([Event(key="a")])[0].lags == ((expected[5.0], 1), (expected[4.0], 0))


def test_the_inputs_are_named_apart_from_features_and_buckets() -> None:
    model = LagLogisticRegression(lags=2)
    batch = [Event(key="a", ts=0.0, features={"gap": 1.0}, label=1), Event(key="a", ts=9.0, label=0)]
    model.predict_batch(batch)
    model.learn_batch(batch)
    weights = model.classifier._weights
    assert {GAP, PREVIOUS_LABEL, NO_PREVIOUS_LABEL, lag_label_input(1), "gap"} <= set(weights)
    assert lag_feature_input(1, "gap") in weights and lag_label_input(2) not in weights


@pytest.mark.parametrize("batch_size", [1, 5, 32])
def test_a_prediction_uses_no_label_of_its_own_nor_anything_later(batch_size: int) -> None:
    events = list(temporal_stream(200, n_keys=3, seed=3))
    model = learned(events[:100], batch_size)
    batch = events[100 : 100 + batch_size]
    t = len(batch) // 2
    altered = [
        *batch[:t],
        dataclasses.replace(batch[t], label=1 - batch[t].label),  # its own label only
        *(dataclasses.replace(e, label=1 - e.label, features={"x": 9.0}) for e in batch[t + 1 :]),
    ]
    np.testing.assert_array_equal(model.predict_batch(batch)[: t + 1], model.predict_batch(altered)[: t + 1])


def test_save_and_load_keep_predictions_and_learning() -> None:
    events = [
        dataclasses.replace(e, categories={"c": str(i % 3)})
        for i, e in enumerate(temporal_stream(400, n_keys=5, seed=2))
    ]
    model = learned(events[:300], 16, category_buckets=8)
    copy = reloaded(model)
    assert isinstance(copy, LagLogisticRegression)
    for start in range(300, 400, 16):
        batch = events[start : start + 16]
        np.testing.assert_array_equal(copy.predict_batch(batch), model.predict_batch(batch))
        model.learn_batch(batch)
        copy.learn_batch(batch)
    assert copy.to_state().keys() == model.to_state().keys()
    assert reloaded(copy).predict_batch(events[:50]).tolist() == model.predict_batch(events[:50]).tolist()


def test_keys_move_between_models_with_their_histories() -> None:
    events = list(temporal_stream(300, n_keys=4, seed=4))
    source = learned(events[:200])
    target = reloaded(source)
    target.forget_keys(["k0", "k1"])
    exported = source.export_keys(["k0", "k1", "unknown"])
    assert exported["keys"] == [key for key in source.tracked_keys() if key in ("k0", "k1")]
    # Through a partition checkpoint, as the service moves them.
    partition = PartitionState(
        topic="t",
        partition=0,
        offset=1,
        events=1,
        keys=["k0"],
        key_state={"logreg_lags": exported},
        instance="i",
    )
    back = tree_to_state(
        decode_tree(encode_tree(state_to_tree(partition), PARTITION), "p", (PARTITION,))[1], PARTITION, "p"
    )
    target.import_keys(back.key_state["logreg_lags"])
    batch = events[200:264]
    np.testing.assert_array_equal(target.predict_batch(batch), source.predict_batch(batch))
    detached = target.detach_keys()
    assert not target.tracked_keys() and target.contexts([Event(key="k0")])[0].lags == ()
    target.attach_keys(detached)
    assert set(target.tracked_keys()) == set(source.tracked_keys())


def test_at_most_max_keys_are_kept_least_recently_seen_out() -> None:
    model = LagLogisticRegression(max_keys=2)
    for key in ["a", "b", "a", "c"]:
        model.learn_batch([Event(key=key, features={"x": 1.0}, label=1)])
    assert list(model.tracked_keys()) == ["a", "c"]
    model.import_keys(histories_to_state({key: model.histories["a"] for key in ["d", "e", "f"]}))
    assert list(model.tracked_keys()) == ["e", "f"]
    with pytest.raises(ConfigError, match="max_keys"):
        LagLogisticRegression(max_keys=0)
    with pytest.raises(ConfigError, match="lags"):
        LagLogisticRegression(lags=-1)


def test_no_lags_gives_the_lstms_inputs_only() -> None:
    model = learned(list(temporal_stream(100, n_keys=2, seed=1)), lags=0)
    assert not any(
        isinstance(name, tuple) and name[0].startswith("lag") for name in model.classifier._weights
    )
    assert (
        reloaded(model).predict_batch([Event(key="k0")]).tolist()
        == model.predict_batch([Event(key="k0")]).tolist()
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["key_state"].update(previous_label=np.array([3, 0], dtype=np.int8)), "previous_label"),
        (lambda s: s["key_state"].update(last_ts=np.array([math.inf, 0.0])), "last_ts"),
        (lambda s: s["key_state"]["lag_feature_values"].__setitem__(0, math.nan), "lag_feature_values"),
        (lambda s: s["key_state"]["lag_feature_values"].__setitem__(0, 1e6), "beyond the input clip"),
        (lambda s: s["key_state"]["lag_feature_index"].__setitem__(0, 7), "lag_feature_index"),
        (lambda s: s["key_state"]["lag_counts"].__setitem__(0, 5), "lag_"),
        (lambda s: s.update(lags=1), "lag"),
        (lambda s: s.update(max_keys=1), "max_keys"),
        (lambda s: s["lag_feature_weights"].update(names=["nope"]), "names"),
        (lambda s: s.update(gap_scaler=np.array([-1.0, 0.0, 0.0])), "gap_scaler"),
        (lambda s: s.update(extra=1), "unexpected"),
        (lambda s: s.update(trend_scales=9), "trend_scales"),
        (lambda s: s["trend_weights"].update(names=["nope"]), "names"),
        (lambda s: s["key_state"]["trend_values"].__setitem__(0, math.nan), "trend_values"),
        (lambda s: s["key_state"]["trend_index"].__setitem__(0, 7), "trend_index"),
        # Counts whose sum wraps around in int64: refused, not an IndexError later.
        (lambda s: s["key_state"].update(trend_counts=np.array([2**63 - 1, 1], dtype=np.int64)), "trend_"),
        (lambda s: s["key_state"].update(lag_counts=np.array([2**63 - 1, 1], dtype=np.int64)), "lag_"),
    ],
)
def test_damaged_states_are_refused(change: Any, message: str) -> None:
    events = [Event(key=k, ts=float(i), features={"x": float(i)}, label=i % 2) for i, k in enumerate("abab")]
    state = learned(events, 2).to_state()
    change(state)
    with pytest.raises(CheckpointRejected, match=message):
        model_from_state(state, "checkpoint")


HOSTILE = st.one_of(
    st.floats(-1e18, 1e18, allow_nan=False),
    st.sampled_from([1e18, -1e18, 5e-324, -0.0, 0.0]),
)


@PROPERTY
@given(
    events=st.lists(
        st.builds(
            Event,
            key=st.text(max_size=5),
            ts=st.one_of(st.none(), HOSTILE),
            features=st.dictionaries(st.text(max_size=3), HOSTILE, max_size=4),
            label=st.sampled_from([None, 0, 1]),
            categories=st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_hostile_values_survive_predicting_learning_and_a_checkpoint(events: list[Event]) -> None:
    model = build_models(["logreg_lags"], max_keys=4, lstm={"max_features": 3, "category_buckets": 4})[
        "logreg_lags"
    ]
    for batch in (events, events[::-1]):
        assert np.isfinite(model.predict_batch(batch)).all()
        model.learn_batch(batch)
    assert not model.non_finite_parts()
    copy = reloaded(model)
    np.testing.assert_array_equal(copy.predict_batch(events), model.predict_batch(events))


@PROPERTY
@given(events=EVENTS, batch_size=st.integers(1, 16), scales=st.integers(1, 3))
def test_the_trend_inputs_follow_the_lstms_rule(events: list[Event], batch_size: int, scales: int) -> None:
    """Each trend input is the event's standardised feature minus the key's moving average of the
    earlier standardised values of that feature (the LSTM's rule, :func:`trend_deviations`,
    applied here to the values this model standardised)."""
    model = LagLogisticRegression(trend_scales=scales)
    rates = trend_rates(scales)
    averages: dict[tuple[str, int, str], float] = {}
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        model.predict_batch(batch)
        walk = model._walked
        assert walk is not None
        for event, scaled, inputs in zip(batch, walk.scaled, walk.context_inputs, strict=True):
            expected = {}
            for scale, rate in enumerate(rates.tolist()):
                for name, value in scaled.items():
                    average = averages.get((event.key, scale, name), 0.0)
                    expected[trend_input(scale, name)] = value - average
                    averages[event.key, scale, name] = average + rate * (value - average)
            got = {
                name: value
                for name, value in inputs.items()
                if isinstance(name, tuple) and name[0] == "trend"
            }
            assert got.keys() == expected.keys()
            for name, value in expected.items():
                assert got[name] == pytest.approx(max(min(value, 10.0), -10.0), abs=1e-12)
        model.learn_batch(batch)


def test_the_trend_survives_a_checkpoint_and_a_key_transfer_and_old_states_load_without_it() -> None:
    events = list(temporal_stream(300, n_keys=4, seed=5))
    model = learned(events[:200], trend_scales=2)
    assert any(isinstance(n, tuple) and n[0] == "trend" for n in model.classifier._weights)
    copy = reloaded(model)
    assert copy.trend_scales == 2
    moved = reloaded(model)
    moved.forget_keys(list(moved.tracked_keys()))
    moved.import_keys(model.export_keys(list(model.tracked_keys())))
    batch = events[200:260]
    np.testing.assert_array_equal(copy.predict_batch(batch), model.predict_batch(batch))
    np.testing.assert_array_equal(moved.predict_batch(batch), model.predict_batch(batch))
    # A state written before trend inputs: a model without them, its keys without averages.
    old = learned(events[:200], trend_scales=0).to_state()
    del old["trend_scales"], old["trend_weights"]
    for name in ("trend_counts", "trend_scale", "trend_index", "trend_values"):
        del old["key_state"][name]
    loaded = model_from_state(old, "checkpoint")
    assert loaded.trend_scales == 0 and all(not h.averages for h in loaded.histories.values())
    with pytest.raises(CheckpointRejected, match="trend_scale"):
        state = model.to_state()
        state["key_state"]["trend_scale"][0] = 2  # a scale this model does not have
        model_from_state(state, "checkpoint")
