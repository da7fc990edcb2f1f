"""Categorical features in the models: the LSTM and logreg learn from them, through the same
hashed buckets, and any category survives predicting, learning and a checkpoint."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_lstm.errors import CheckpointRejected, ConfigError
from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.messages.categories import DEFAULT_CATEGORY_BUCKETS, category_probes
from stream_lstm.messages.events import Event
from stream_lstm.models.baselines import LogisticRegressionBaseline
from stream_lstm.models.build import build_models, model_from_state
from stream_lstm.state.codec import decode_tree, encode_tree

SMALL_LSTM = {"hidden_size": 8, "device": "cpu"}
#: P(label = 1) by colour. No two colours share both buckets (see test_the_colours_hash_apart); some
#: share one, as colours of users' streams do.
P_ONE = {"red": 0.9, "blue": 0.1, "yellow": 0.8, "purple": 0.15, "orange": 0.85, "white": 0.2, "grey": 0.5}


def build(name: str, buckets: int) -> Any:
    return build_models([name], lstm={**SMALL_LSTM, "category_buckets": buckets})[name]


def colour_stream(n: int, seed: int) -> list[Event]:
    """Key-free events whose label depends only on their colour, with two noise features."""
    rng = random.Random(seed)
    colours = list(P_ONE)
    events = []
    for _ in range(n):
        colour = rng.choice(colours)
        events.append(
            Event(
                features={"x": rng.gauss(0, 1), "y": rng.gauss(0, 1)},
                categories={"colour": colour},
                label=int(rng.random() < P_ONE[colour]),
            )
        )
    return events


def test_the_colours_hash_apart() -> None:
    probes = [frozenset(category_probes("colour", c, DEFAULT_CATEGORY_BUCKETS)) for c in P_ONE]
    assert len(set(probes)) == len(P_ONE)


@pytest.mark.parametrize("name", ["lstm", "logreg"])
def test_a_label_that_depends_on_a_category_only_is_learned_with_buckets_and_not_without(name: str) -> None:
    events = colour_stream(3000, seed=1)
    labels = np.array([event.label for event in events])
    scored = slice(1500, None)  # after the first half: what each model learned by then
    base_rate = max(labels[scored].mean(), 1 - labels[scored].mean())  # always the majority label
    accuracy = {}
    for buckets in (DEFAULT_CATEGORY_BUCKETS, 0):
        evaluator = PrequentialEvaluator({name: build(name, buckets)}, keep_trace=True)
        for start in range(0, len(events), 64):
            evaluator.process(events[start : start + 64])
        correct = np.concatenate(evaluator.trace[name])  # every event is labelled
        accuracy[buckets] = correct[scored].mean()
    # The colours allow about 0.8 (the mean of max(p, 1 - p)); the features and keys nothing.
    assert accuracy[DEFAULT_CATEGORY_BUCKETS] > base_rate + 0.15, (accuracy, base_rate)
    assert accuracy[0] < base_rate + 0.05, (accuracy, base_rate)


def test_logreg_takes_the_lstms_buckets_and_validates_them() -> None:
    models = build_models(["lstm", "logreg"], lstm={**SMALL_LSTM, "category_buckets": 5})
    assert models["lstm"].category_buckets == models["logreg"].category_buckets == 5
    assert build_models(["logreg"])["logreg"].category_buckets == DEFAULT_CATEGORY_BUCKETS
    for bad in (-1, 2.0, True):
        with pytest.raises(ConfigError, match="category_buckets must be a non-negative integer"):
            LogisticRegressionBaseline(category_buckets=bad)  # type: ignore[arg-type]


def test_a_bucket_input_never_meets_a_feature_named_like_it() -> None:
    """Feature names are strings, buckets integers: a feature named "3" and bucket 3 have weights
    of their own, kept apart in the checkpoint."""
    model = LogisticRegressionBaseline(category_buckets=4)
    colour = next(c for c in P_ONE if 3 in category_probes("colour", c, 4))
    batch = [Event(features={"3": 1.0}, categories={"colour": colour}, label=1)] * 5
    model.predict_batch(batch)
    model.learn_batch(batch)
    weights = model.classifier._weights
    assert {"3", 3} <= set(weights) and list(model.feature_names) == ["3"]
    state = model.to_state()
    buckets = sorted(category_probes("colour", colour, 4))
    assert (
        state["weights"]["names"] == ["3"]
        and sorted(state["category_weights"]["buckets"].tolist()) == buckets
    )
    reloaded = LogisticRegressionBaseline.from_state(state, "logreg")
    assert dict(reloaded.classifier._weights.items()) == dict(weights.items())


def test_a_logreg_checkpoint_written_before_categories_loads_without_buckets() -> None:
    model = LogisticRegressionBaseline(category_buckets=0)
    batch = [Event(features={"x": float(i)}, label=i % 2) for i in range(20)]
    model.predict_batch(batch)
    model.learn_batch(batch)
    state = model.to_state()
    del state["category_buckets"], state["category_weights"]  # what the data format held before
    old = LogisticRegressionBaseline.from_state(state, "logreg")
    assert old.category_buckets == 0
    coloured = [Event(features={"x": 1.0}, categories={"colour": "red"})]
    np.testing.assert_array_equal(old.predict_batch(coloured), model.predict_batch(coloured))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"buckets": np.array([0, 4])}, r"a bucket is not in \[0, 4\)"),
        ({"buckets": np.array([-1, 1])}, r"a bucket is not in \[0, 4\)"),
        ({"buckets": np.array([2, 2])}, "holds a bucket twice"),
        ({"values": np.array([1.0])}, "expected shape"),
        ({"buckets": np.array([0.0, 1.0])}, "expected a int64 array"),
    ],
)
def test_damaged_bucket_weights_are_refused(change: dict[str, Any], message: str) -> None:
    state = LogisticRegressionBaseline(category_buckets=4).to_state()
    state["category_weights"] = {"buckets": np.array([0, 1]), "values": np.array([0.5, -0.5]), **change}
    with pytest.raises(CheckpointRejected, match=message):
        LogisticRegressionBaseline.from_state(state, "logreg")


# ---------------------------------------------------------------------- any category


#: Valid Unicode (no lone surrogates), non-BMP and control characters included.
UNICODE = st.characters(exclude_categories=("Cs",))
NAMES = st.text(UNICODE, min_size=1, max_size=64)  # at most 256 UTF-8 bytes
VALUES = st.text(UNICODE, max_size=300)  # empty ones too


@st.composite
def events_with_categories(draw: st.DrawFn) -> list[Event]:
    """A few events with any categories (and a numeric feature whose name no category takes)."""
    events = []
    for _ in range(draw(st.integers(1, 6))):
        categories = draw(st.dictionaries(NAMES.filter(lambda name: name != "x"), VALUES, max_size=8))
        label = draw(st.sampled_from([0, 1, None]))
        key = draw(st.sampled_from(["", "a", "\U0001f600"]))
        events.append(
            Event(key=key, features={"x": draw(st.floats(-10, 10))}, categories=categories, label=label)
        )
    return events


@pytest.mark.parametrize("name", ["lstm", "logreg", "logreg_lags"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=events_with_categories(), then=events_with_categories())
def test_any_categories_survive_predict_learn_and_a_checkpoint(
    name: str, first: list[Event], then: list[Event]
) -> None:
    model = build(name, buckets=4)  # few buckets: collisions and counts above 1 are common
    probabilities = model.predict_batch(first)
    assert np.isfinite(probabilities).all()
    model.learn_batch(first)
    kind, tree = decode_tree(encode_tree(model.to_state(), "model"), "checkpoint", ("model",))
    reloaded = model_from_state(tree, "checkpoint")
    assert kind == "model" and not reloaded.non_finite_parts()
    np.testing.assert_array_equal(reloaded.predict_batch(then), model.predict_batch(then))
