"""No accepted event can poison what the models learn, and no stream can grow their state.

Accepted means what the decoder lets through: finite numbers with ``|x| <= 1e18`` (features and
``ts``), at most 256 features per message. The guards: standardised inputs are clipped
(``input_clip``); a batch whose loss or gradient is not finite is not applied (weights and Adam's
state untouched) and is counted; names past ``max_features`` are counted, not kept.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import random
from collections.abc import Iterator
from types import MappingProxyType

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_lstm.errors import ConfigError
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.learner.legacy_state import learner_from_pickled_state
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.learner.scaler import RunningScaler
from stream_lstm.messages.events import Event
from stream_lstm.models.baselines import LogisticRegressionBaseline
from stream_lstm.offline.evaluate import batches, evaluate_stream
from stream_lstm.offline.generator import temporal_stream
from tests.old_checkpoints import old_learner_state

BIG = 1e18  # the largest magnitude the decoder accepts


def hostile_stream(n_events: int, n_keys: int, seed: int) -> Iterator[Event]:
    """Events with the extremes an attacker may send: +-1e18 features, a column constant for a
    long while and then a spike, ts jumping from -1e18 to 1e18, features met once and never
    again, missing labels and timestamps, tiny values next to huge ones."""
    rng = random.Random(seed)
    for i in range(n_events):
        features: dict[str, float] = {"steady": 3.0 if i < n_events // 2 else rng.choice([3.0, BIG, -BIG])}
        features["wild"] = rng.choice([BIG, -BIG, 0.0, 1e-300, -5e-324, rng.gauss(0.0, 1.0)])
        if rng.random() < 0.3:
            features["normal"] = rng.gauss(0.0, 1.0)
        if i % 97 == 0:
            features[f"once-{i}"] = rng.choice([BIG, -BIG])
        ts = rng.choice([None, -BIG, BIG, 0.0, rng.uniform(-BIG, BIG), float(i)])
        yield Event(
            key=f"k{rng.randrange(n_keys)}",
            ts=ts,
            features=features,
            label=rng.choice([None, 0, 1, 1]),
        )


def assert_finite_state(learner: LSTMLearner) -> None:
    """Weights, Adam's state, scaler statistics and key states are all finite (checked here
    directly, not through the learner's own non_finite_parts)."""
    for name, parameter in learner.network.named_parameters():
        assert torch.isfinite(parameter).all(), name
    for index, state in learner.optimizer.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.isfinite(torch.as_tensor(value)).all(), (index, name)
    for name in ("count", "mean", "m2", "_inverse_std"):
        assert np.isfinite(getattr(learner.scaler, name)).all(), name
    for name in ("h0", "c0", "window"):
        assert torch.isfinite(getattr(learner.keys, name)).all(), name
    assert not np.isinf(learner.keys.last_ts).any()
    assert learner.non_finite_parts() == []


def assert_probabilities(probabilities: np.ndarray, n: int) -> None:
    assert probabilities.shape == (n,)
    assert np.isfinite(probabilities).all()
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def run(learner, events: list[Event], sizes: list[int]) -> None:  # type: ignore[no-untyped-def]
    start = 0
    for size in itertools.cycle(sizes):
        batch = events[start : start + size]
        if not batch:
            return
        assert_probabilities(learner.predict_batch(batch), len(batch))
        learner.learn_batch(batch)
        start += size


@pytest.mark.parametrize("full_window_path", [True, False])
@pytest.mark.parametrize("check_on_host", [True, False])
def test_extreme_accepted_values_never_leave_a_non_finite_number(
    full_window_path: bool, check_on_host: bool
) -> None:
    """Both forward paths (the steady-state one and the general chunked one), and both ways of
    checking a step (on the host, as the CPU does, and on the device, as a GPU does)."""
    events = list(hostile_stream(1500, n_keys=30, seed=1))
    learner = LSTMLearner(hidden_size=8, tbptt_steps=4, max_features=6, device="cpu", learning_rate=0.05)
    learner._full_window_path = full_window_path
    learner._check_on_host = check_on_host
    start = 0
    for size in itertools.cycle([1, 7, 64, 3, 200, 30, 30]):
        batch = events[start : start + size]
        if not batch:
            break
        assert_probabilities(learner.predict_batch(batch), len(batch))
        learner.learn_batch(batch)
        assert_finite_state(learner)
        start += size
    # It did learn: the guards skipped nothing on these accepted values.
    assert learner.steps > 20 and learner.guard_stats()["skipped_non_finite_loss"] == 0
    assert learner.guard_stats()["skipped_non_finite_gradient"] == 0
    # The standardised inputs it keeps in its windows stay within the clipping range.
    assert learner.keys.window.abs().max() <= learner.input_clip


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("input_clip", [10.0, 1e300])
def test_values_past_the_decoders_bound_cannot_poison_the_learner_either(input_clip: float) -> None:
    """What made NaN weights before the guards: values beyond float32 (1e39, 1e150, 1e308) and a
    ts of -1e308 then 1e308. The decoder refuses them now, but the learner holds without it: the
    scaler leaves them out of its statistics, and the clip bounds them; with a clip too wide to
    help they reach the LSTM as infinities, and the step guard refuses those batches."""
    events = [
        Event(key="a", ts=-1e308, features={"x": 1.0}, label=1),
        Event(key="a", ts=1e308, features={"x": 1e39}, label=0),
        Event(key="b", features={"x": 1e150, "y": -1e308}, label=1),
        Event(key="a", features={"x": -1.0}, label=0),
    ] * 10
    learner = LSTMLearner(hidden_size=8, tbptt_steps=4, device="cpu", input_clip=input_clip)
    run(learner, events, [1, 4, 3])
    assert_finite_state(learner)
    stats = learner.guard_stats()
    skipped = stats["skipped_non_finite_loss"] + stats["skipped_non_finite_gradient"]
    # On each batch, unless its first step is skipped; 40 events are all within the extra step's.
    steps = learner.steps_per_batch + 1
    assert learner.extra_step_events > len(events)
    if input_clip == 10.0:
        assert skipped == 0 and learner.steps == 15 * steps  # batches of 1, 4 and 3 events, five times
    else:
        assert skipped > 0 and learner.steps == (15 - skipped) * steps


BATCH_EVENTS = st.builds(
    Event,
    key=st.sampled_from(["a", "b", "c", "d"]),
    ts=st.one_of(
        st.none(),
        st.sampled_from([-BIG, BIG, 0.0]),
        st.floats(-BIG, BIG, allow_nan=False, allow_infinity=False),
    ),
    features=st.dictionaries(
        st.sampled_from(["x", "y", "z", "w", "v", "u"]),
        st.one_of(
            st.sampled_from([BIG, -BIG, 0.0, 5e-324, -1e-300, 1.0]),
            st.floats(-BIG, BIG, allow_nan=False, allow_infinity=False),
        ),
        max_size=6,
    ),
    label=st.sampled_from([None, 0, 1]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches_=st.lists(st.lists(BATCH_EVENTS, min_size=1, max_size=12), min_size=1, max_size=8),
    full_window_path=st.booleans(),
    check_on_host=st.booleans(),
    stream_rate=st.booleans(),
)
def test_any_sequence_of_accepted_batches_keeps_every_number_finite(
    batches_: list[list[Event]], full_window_path: bool, check_on_host: bool, stream_rate: bool
) -> None:
    learner = LSTMLearner(
        hidden_size=4,
        tbptt_steps=3,
        max_features=4,
        device="cpu",
        learning_rate=0.1,
        stream_rate_half_life=14 if stream_rate else 0,
    )
    learner._full_window_path = full_window_path
    learner._check_on_host = check_on_host
    logreg = LogisticRegressionBaseline(max_features=4, learning_rate=0.5)
    for batch in batches_:
        for model in (learner, logreg):
            assert_probabilities(model.predict_batch(batch), len(batch))
            model.learn_batch(batch)
        assert_finite_state(learner)
        assert logreg.non_finite_parts() == []
    if stream_rate:
        return  # once a second key comes, the rate takes one of the LSTM's names, not logreg's
    assert list(logreg.feature_names) == sorted(learner.feature_columns, key=learner.feature_columns.get)
    assert logreg.features_dropped == learner.features_dropped


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.one_of(st.just(np.nan), st.floats(-BIG, BIG, allow_nan=False, allow_infinity=False)),
            min_size=2,
            max_size=2,
        ),
        min_size=1,
        max_size=30,
    ),
    st.integers(1, 5),
)
def test_scaler_statistics_stay_finite_and_its_output_within_the_clip(
    rows: list[list[float]], size: int
) -> None:
    scaler = RunningScaler(2)
    values = np.array(rows)
    for start in range(0, len(values), size):
        batch = values[start : start + size]
        scaled = scaler.transform(batch, clip=10.0)
        assert np.isfinite(scaled).all() and np.abs(scaled).max() <= 10.0
        scaler.update(batch)
        for name in ("count", "mean", "m2", "_inverse_std"):
            assert np.isfinite(getattr(scaler, name)).all(), name


def test_scaler_counts_infinite_values_as_missing() -> None:
    scaler = RunningScaler(1)
    scaler.update(np.array([[1.0], [np.inf], [3.0], [-np.inf]]))
    scaler.update(np.array([[np.inf]]))
    assert scaler.count.tolist() == [2.0] and scaler.mean.tolist() == [2.0]
    assert scaler.transform(np.array([[np.inf], [-np.inf]]), clip=5.0).ravel().tolist() == [5.0, -5.0]


# ---------------------------------------------------------------------- skipped steps


def trained_learner(check_on_host: bool) -> tuple[LSTMLearner, list[list[Event]]]:
    chunks = list(batches(temporal_stream(400, n_keys=5, seed=3), 16))
    learner = LSTMLearner(hidden_size=8, tbptt_steps=4, device="cpu")
    learner._check_on_host = check_on_host
    for chunk in chunks[:10]:  # Adam's averages and step counts exist and are not zero
        learner.predict_batch(chunk)
        learner.learn_batch(chunk)
    return learner, chunks[10:]


def snapshot(learner: LSTMLearner) -> dict[str, torch.Tensor]:
    state = {f"weight {n}": p.detach().clone() for n, p in learner.network.named_parameters()}
    for index, values in learner.optimizer.state_dict()["state"].items():
        for name, value in values.items():
            state[f"{name} {index}"] = torch.as_tensor(value).clone()
    return state


def assert_bit_identical(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name


class PoisonedGradient(torch.autograd.Function):
    """The identity forward (a finite loss), an infinite gradient backward."""

    @staticmethod
    def forward(ctx, value):  # type: ignore[no-untyped-def]
        return value.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        return grad * float("inf")


REAL_LOSS = torch.binary_cross_entropy_with_logits
POISONS = {
    "non_finite_loss": lambda *args: REAL_LOSS(*args) * float("nan"),
    "non_finite_gradient": lambda *args: PoisonedGradient.apply(REAL_LOSS(*args)),
}


@pytest.mark.parametrize("reason", sorted(POISONS))
@pytest.mark.parametrize("check_on_host", [True, False])
def test_a_batch_with_a_non_finite_loss_or_gradient_changes_no_weight_and_no_optimizer_state(
    reason: str, check_on_host: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    learner, rest = trained_learner(check_on_host)
    before, steps = snapshot(learner), learner.steps
    assert learner.guard_stats() == {
        "skipped_non_finite_loss": 0,
        "skipped_non_finite_gradient": 0,
        "features_dropped": 0,
    }
    with monkeypatch.context() as patch:
        patch.setattr(torch, "binary_cross_entropy_with_logits", POISONS[reason])
        for chunk in rest[:2]:
            learner.predict_batch(chunk)
            learner.learn_batch(chunk)
    assert_bit_identical(before, snapshot(learner))  # weights, Adam's moments and step counts
    assert learner.steps == steps
    stats = learner.guard_stats()
    assert (
        stats[f"skipped_{reason}"] == 2 and sum(v for k, v in stats.items() if k != f"skipped_{reason}") == 0
    )
    if reason == "non_finite_gradient":
        assert np.isfinite(learner.training_stats()["loss"])
    assert_finite_state(learner)
    # Persisted in checkpoints, and learning goes on once the batches are sound again.
    copy = pickle.loads(pickle.dumps(learner))
    assert copy.guard_stats() == stats and copy.steps == steps
    copy._check_on_host = check_on_host
    # The skipped batches moved the extra step's clock too; these two are still within it.
    assert copy.events_learned + sum(map(len, rest[2:4])) <= copy.extra_step_events
    per_batch = copy.steps_per_batch + 1
    for chunk in rest[2:4]:
        copy.predict_batch(chunk)
        copy.learn_batch(chunk)
    assert copy.steps == steps + 2 * per_batch and copy.guard_stats() == stats
    assert not torch.equal(copy.network.lstm.weight_hh_l0, before["weight lstm.weight_hh_l0"])


@pytest.mark.parametrize("full_window_path", [True, False])
@pytest.mark.parametrize("check_on_host", [True, False])
def test_a_poisoned_key_state_is_skipped_and_written_back_finite(
    full_window_path: bool, check_on_host: bool
) -> None:
    """A non-finite key state (which a guarded learner never makes) makes that batch's loss NaN:
    the step is skipped and the states written for the batch are finite again."""
    learner, _ = trained_learner(check_on_host)
    learner._full_window_path = full_window_path
    before = snapshot(learner)
    [slot] = learner.keys.lookup(["k1"])
    learner.keys.h0[slot] = float("nan")
    learner.keys.c0[slot] = float("inf")
    batch = [Event(key="k1", features={"a": 1.0}, label=1), Event(key="k2", features={"a": 0.5}, label=0)]
    probabilities = learner.predict_batch(batch)
    assert_probabilities(probabilities, 2)
    assert probabilities[0] == 0.5  # not a number from a NaN state: the neutral answer
    learner.learn_batch(batch)
    assert learner.guard_stats()["skipped_non_finite_loss"] == 1
    assert_bit_identical(before, snapshot(learner))
    assert_finite_state(learner)


# ---------------------------------------------------------------------- hyperparameter


def test_input_clip_is_a_validated_hyperparameter_with_a_default_for_old_checkpoints() -> None:
    learner = LSTMLearner(hidden_size=4, device="cpu", input_clip=3)
    assert learner.input_clip == 3.0 and learner.hyperparameters()["input_clip"] == 3.0
    assert LSTMLearner(**learner.hyperparameters()).input_clip == 3.0
    assert LSTMLearner(hidden_size=4, device="cpu").input_clip == 10.0
    for bad in (0, -1.0, float("inf"), float("nan"), "10"):
        with pytest.raises(ConfigError, match="input_clip"):
            LSTMLearner(hidden_size=4, device="cpu", input_clip=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_features"):
        LogisticRegressionBaseline(max_features=0)
    with pytest.raises(ConfigError, match="input_clip"):
        LogisticRegressionBaseline(input_clip=0.0)


def test_a_learner_saved_before_the_guards_converts_with_their_defaults() -> None:
    # Without the average with the base rate, which came later (its odds read as 0, below).
    learner = LSTMLearner(hidden_size=4, device="cpu", max_features=2, base_rate_odds=0)
    events = [Event(key="a", features={"p": 1.0, "q": 2.0, "r": 3.0}, label=1)] * 3
    learner.predict_batch(events)
    learner.learn_batch(events)
    state = old_learner_state(learner)
    # What an older version wrote: the dropped names as a set, no counts, no input_clip.
    del state["features_dropped"], state["skipped_non_finite_loss"], state["skipped_non_finite_gradient"]
    del state["hyperparameters"]["input_clip"]
    state["dropped_features"] = {"r"}
    old = learner_from_pickled_state(state)
    assert old.input_clip == 10.0 and old.hyperparameters()["input_clip"] == 10.0
    assert old.lr_boost_half_life == 0  # the early boost came later
    assert old.guard_stats() == {
        "skipped_non_finite_loss": 0,
        "skipped_non_finite_gradient": 0,
        "features_dropped": 0,
    }
    assert old.extra_step_events == 0  # so did the early extra step, which this batch took
    assert old.base_rate_odds == 0 and old.base_rate.to_state()["labelled"] == 0  # and the average
    assert old.steps == learner.steps == learner.steps_per_batch + 1 and not hasattr(old, "dropped_features")
    np.testing.assert_array_equal(old.predict_batch(events), learner.predict_batch(events))


# ---------------------------------------------------------------------- bounded feature sets


def many_names(n_events: int, per_event: int, seed: int) -> list[Event]:
    """Every event brings ``per_event`` names never seen before, beside two usual ones."""
    rng = random.Random(seed)
    counter = itertools.count()
    return [
        Event(
            key=f"k{rng.randrange(20)}",
            features={
                "x": rng.gauss(0, 1),
                "y": rng.gauss(0, 1),
                **{f"n{next(counter)}": 1.0 for _ in range(per_event)},
            },
            label=rng.choice([None, 0, 1]),
        )
        for _ in range(n_events)
    ]


def test_state_does_not_grow_with_the_number_of_distinct_feature_names() -> None:
    events = many_names(2000, per_event=10, seed=4)  # 20,000 distinct new names
    evaluator = PrequentialEvaluator(
        build_models(["lstm", "logreg"], lstm={"hidden_size": 4, "device": "cpu"})
    )
    lstm, logreg = evaluator.models["lstm"], evaluator.models["logreg"]
    sizes = []
    for start in range(0, len(events), 100):
        evaluator.process(events[start : start + 100])
        with evaluator.keys_set_aside():
            sizes.append((len(pickle.dumps(lstm)), len(pickle.dumps(logreg))))
    assert len(lstm.feature_columns) == 32 and len(logreg.feature_names) == 32
    assert (
        len(logreg.scaler.counts) <= 32 and len(logreg.scaler.means) <= 32 and len(logreg.scaler.vars) <= 32
    )
    assert len(logreg.classifier._weights) <= 32
    # 30 of the first event's names took the columns that x, y left: every later one was dropped.
    assert lstm.features_dropped == logreg.features_dropped == 20_000 - 30
    assert evaluator.guard_stats() == {
        "lstm": {"skipped_non_finite_loss": 0, "skipped_non_finite_gradient": 0, "features_dropped": 19_970},
        "logreg": {"features_dropped": 19_970},
    }
    # Checkpoint sizes after 2,000 and after 20,000 new names: the same but for a few digits.
    for early, late in zip(sizes[1], sizes[-1], strict=True):
        assert abs(late - early) < 64, sizes


@pytest.mark.parametrize("mapping", [dict, MappingProxyType])
def test_the_logistic_regression_sees_the_lstms_feature_names(mapping: type) -> None:
    """The same names in the same order, from a stream where names appear in unlabelled events,
    in varying orders, several at once, and after the bound."""
    rng = random.Random(6)
    names = [f"f{i}" for i in range(12)]
    events = []
    for i in range(600):
        chosen = rng.sample(names[: 2 + i // 50], k=min(3, 2 + i // 50))
        events.append(
            Event(
                key=f"k{rng.randrange(4)}",
                features=mapping({name: rng.gauss(0, 1) for name in chosen}),
                label=None if rng.random() < 0.4 else rng.randrange(2),
            )
        )
    # Without the stream rate, which takes a place among the LSTM's names and is not logreg's.
    lstm_settings = {
        "hidden_size": 4,
        "max_features": 5,
        "input_clip": 4.0,
        "device": "cpu",
        "stream_rate_half_life": 0,
    }
    evaluator = PrequentialEvaluator(build_models(["lstm", "logreg"], lstm=lstm_settings))
    lstm, logreg = evaluator.models["lstm"], evaluator.models["logreg"]
    assert (logreg.max_features, logreg.input_clip) == (5, 4.0) == (lstm.max_features, lstm.input_clip)
    for start in range(0, len(events), 25):
        evaluator.process(events[start : start + 25])
        assert list(logreg.feature_names) == sorted(lstm.feature_columns, key=lstm.feature_columns.get)
        assert logreg.features_dropped == lstm.features_dropped
    assert len(lstm.feature_columns) == 5 and lstm.features_dropped > 100
    assert set(logreg.scaler.counts) <= set(logreg.feature_names)


def test_the_logistic_regression_stays_finite_under_extreme_values() -> None:
    model = LogisticRegressionBaseline(learning_rate=0.5)
    events = list(hostile_stream(3000, n_keys=3, seed=7))
    run(model, events, [1, 16, 64])
    assert model.non_finite_parts() == []
    for value in [*model.classifier._weights.values(), model.classifier.intercept]:
        assert np.isfinite(value)
    for table in (model.scaler.means, model.scaler.vars):
        assert all(np.isfinite(value) for value in table.values())
    probabilities = model.predict_batch(events[:200])
    assert_probabilities(probabilities, 200)
    assert len(set(probabilities.round(6))) > 1  # it still learns something


def test_a_logistic_regression_saved_before_the_bound_is_cut_to_it() -> None:
    model = LogisticRegressionBaseline()
    events = [Event(features={f"f{i}": float(i), "z": 1.0}, label=i % 2) for i in range(40)]
    model.predict_batch(events)
    model.learn_batch(events)
    assert len(model.feature_names) == 32
    state = dict(model.__dict__)
    # What an older version pickled: river's objects alone, with every name it ever met.
    for name in ("feature_names", "features_dropped", "_predicted"):
        del state[name]
    model.scaler.learn_one({f"g{i}": 1.0 for i in range(50)})
    model.classifier._weights.update({f"g{i}": 0.1 for i in range(50)})
    old = LogisticRegressionBaseline.__new__(LogisticRegressionBaseline)
    old.__setstate__(state)
    assert old.max_features == 32 and old.input_clip == 10.0 and old.features_dropped == 0
    assert len(old.feature_names) == 32 and list(old.feature_names)[:2] == ["f0", "z"]
    assert set(old.scaler.counts) <= set(old.feature_names)
    assert set(old.classifier._weights.keys()) <= set(old.feature_names)
    assert_probabilities(old.predict_batch(events), 40)
    assert old.features_dropped == 40 - 31  # f31 ... f39 have no place left (f0 ... f30 and z do)


# ---------------------------------------------------------------------- where the stats go


def test_an_evaluation_that_skipped_updates_ends_with_a_warning_with_the_counts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    evaluator = PrequentialEvaluator(
        build_models(["lstm", "no_change"], lstm={"hidden_size": 4, "device": "cpu"})
    )
    events = list(temporal_stream(64, n_keys=3, seed=1))
    monkeypatch.setattr(torch, "binary_cross_entropy_with_logits", POISONS["non_finite_loss"])
    with caplog.at_level(logging.WARNING, logger="stream_lstm.offline.evaluate"):
        evaluate_stream(events, evaluator, batch_size=16)
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "lstm skipped 4 update(s)" in record.getMessage()
    assert "non_finite_loss: 4" in record.getMessage()
    assert evaluator.guard_stats() == {
        "lstm": {"skipped_non_finite_loss": 4, "skipped_non_finite_gradient": 0, "features_dropped": 0}
    }
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stream_lstm.offline.evaluate"):
        evaluate_stream(events, PrequentialEvaluator(build_models(["no_change"])), batch_size=16)
    assert not caplog.records  # nothing skipped, nothing said


def test_a_learner_in_another_process_forwards_its_guard_stats() -> None:
    from stream_lstm.learner.process import LearnerProcess

    learner = LSTMLearner(hidden_size=4, device="cpu", max_features=1)
    process = LearnerProcess(learner)
    try:
        evaluator = PrequentialEvaluator(
            {"lstm": process, "logreg": LogisticRegressionBaseline(max_features=1)}
        )
        evaluator.process([Event(key="a", features={"x": 1.0, "y": 2.0}, label=1)] * 4)
        expected = {"skipped_non_finite_loss": 0, "skipped_non_finite_gradient": 0, "features_dropped": 4}
        assert process.guard_stats() == expected
        assert evaluator.guard_stats() == {"lstm": expected, "logreg": {"features_dropped": 4}}
        assert process.non_finite_parts() == []
    finally:
        process.close()


def test_the_baselines_in_a_second_process_take_the_lstms_feature_bound(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from stream_lstm.offline.evaluate import CsvSpec, SideLane
    from stream_lstm.offline.generator import write_csv

    path = tmp_path / "stream.csv"
    write_csv(temporal_stream(300, n_keys=6, seed=2), path)
    spec = CsvSpec(str(path), label="label", key="key", ts="ts")
    lstm = {"hidden_size": 4, "max_features": 1, "device": "cpu"}
    lane = SideLane(spec, ["logreg"], batch_size=32, window=100, max_keys=100, keep_trace=False, lstm=lstm)
    try:
        here = PrequentialEvaluator(build_models(["lstm"], max_keys=100, lstm=lstm), window=100, max_keys=100)
        evaluation = evaluate_stream(
            spec.events(), here, batch_size=32, side_lane=lane, order=["lstm", "logreg"]
        )
    finally:
        lane.close()
    stats = evaluation.results.guard_stats()
    assert stats["lstm"]["features_dropped"] == stats["logreg"]["features_dropped"] > 300
