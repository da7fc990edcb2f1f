"""The LSTM's average with the base rate: the network's probabilities wherever it beats the rate of
positive labels, about that rate on a stream without signal; prequential, bounded, kept by
checkpoints, changeable on resume, and one bound for its setting, learner and checkpoint."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_lstm.config.declared import RUN_SETTINGS
from stream_lstm.config.setting import base_rate_odds as odds_setting
from stream_lstm.config.setting import resolve_settings
from stream_lstm.errors import CheckpointRejected, ConfigError
from stream_lstm.learner.base_rate import CLIP, LEAD_CAP, LOG_ODDS_FLOOR, MAX_LABELLED, BaseRateAverage
from stream_lstm.learner.limits import DEFAULT_BASE_RATE_ODDS, MAX_BASE_RATE_ODDS
from stream_lstm.learner.lstm_learner import LSTMLearner
from stream_lstm.offline.batches import batches
from stream_lstm.offline.families import suite_stream
from stream_lstm.offline.generator import temporal_stream
from tests.unit.learner.test_lr_boost import (
    assert_checkpoint_refuses,
    learner,
    resumed_after_four_batches,
    run_args,
    stream,
    turned_off_on_resume,
)
from tests.unit.learner.test_steps_per_batch import learn


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.where(labels == 1, probabilities, 1.0 - probabilities))))


def coin_tosses(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, n).astype(np.float64)


# ---------------------------------------------------------------------- the average itself


def test_off_passes_the_networks_probabilities_and_keeps_the_record_for_later() -> None:
    off = BaseRateAverage(0.0)
    labels = coin_tosses(64, seed=5)
    confident = np.full(64, 0.95)  # a network that says 1 where the labels are a coin toss
    for _ in range(3):
        assert off.blend(confident) is confident and off.network_weight() == 1.0
        off.learn(labels, confident)
    assert off.labelled == 192 and off.positives == 3 * int(labels.sum())
    assert off.lead == LOG_ODDS_FLOOR  # the odds are 0: its lowest lead is the floor itself
    on = off.with_odds(DEFAULT_BASE_RATE_ODDS)  # turned on: it starts from the record
    assert on.rate == off.rate and on.network_weight() == pytest.approx(0.5)


def test_the_networks_probabilities_pass_unchanged_once_it_leads() -> None:
    average = BaseRateAverage(DEFAULT_BASE_RATE_ODDS)
    labels = coin_tosses(64, seed=1)
    knowing = np.where(labels == 1, 0.9, 0.1)  # a network that knows the labels
    assert 0 < 1.0 - average.network_weight() < 1e-4  # the prior odds alone: a little base rate
    for _ in range(4):
        average.learn(labels, knowing)
    assert average.network_weight() == 1.0
    assert average.blend(knowing) is knowing


def test_a_network_without_signal_gives_way_to_the_base_rate() -> None:
    rng = np.random.default_rng(2)
    average = BaseRateAverage(DEFAULT_BASE_RATE_ODDS)
    network, blended, labels = [], [], []
    for _ in range(200):  # 12,800 coin tosses, which the network answers with noise around 0.5
        batch_labels = (rng.random(64) < 0.6).astype(np.float64)
        noisy = np.clip(0.6 + rng.normal(0.0, 0.08, 64), 0.01, 0.99)
        network.append(noisy)
        blended.append(average.blend(noisy))
        average.learn(batch_labels, noisy)
        labels.append(batch_labels)
    y, p, q = np.concatenate(labels), np.concatenate(network), np.concatenate(blended)
    assert average.network_weight() < 1e-3
    assert average.rate == pytest.approx(y.mean(), abs=1e-3)
    rate_loss = log_loss(np.full(y.size, y.mean()), y)
    assert log_loss(q, y) < log_loss(p, y) - 0.002
    assert log_loss(q, y) < rate_loss + 0.002


def test_its_memory_of_either_models_lead_is_bounded() -> None:
    odds = 5.0
    average = BaseRateAverage(odds)
    labels = coin_tosses(64, seed=3)
    wrong = np.where(labels == 1, 0.2, 0.8)
    for _ in range(50):
        average.learn(labels, wrong)
    assert average.lead == LOG_ODDS_FLOOR - odds  # however long it lost...
    assert 1.0 - average.network_weight() == pytest.approx(1.0 / (1.0 + math.exp(LOG_ODDS_FLOOR)))
    right = np.where(labels == 1, 0.8, 0.2)
    average.learn(labels, right)  # ...one batch that gains 30 nats wins its weight back
    assert average.network_weight() > 0.99
    for _ in range(50):
        average.learn(labels, right)
    assert average.lead == LEAD_CAP


def test_unlabelled_events_count_for_nothing_and_a_confident_miss_is_clipped() -> None:
    average = BaseRateAverage(DEFAULT_BASE_RATE_ODDS)
    average.learn(np.array([np.nan, np.nan]), np.array([0.3, 0.7]))
    assert average.to_state() == {"lead": 0.0, "positives": 0, "labelled": 0}
    average.learn(np.array([np.nan, 1.0]), np.array([0.99, 0.0]))  # certain, and wrong
    assert average.labelled == average.positives == 1
    assert average.lead == pytest.approx(math.log(CLIP) - math.log(0.5))


def test_its_state_round_trips() -> None:
    average = BaseRateAverage(3.0)
    average.learn(coin_tosses(50, seed=4), np.full(50, 0.7))
    again = BaseRateAverage.from_state(average.to_state(), "base_rate", 3.0)
    assert again.to_state() == average.to_state() and again.odds == 3.0


@pytest.mark.parametrize(
    "tree",
    [
        {"lead": 0.0, "positives": 3, "labelled": 2},  # more positives than labels
        {"lead": LEAD_CAP + 1, "positives": 0, "labelled": 0},
        {"lead": -2 * DEFAULT_BASE_RATE_ODDS - 1, "positives": 0, "labelled": 0},
        {"lead": math.nan, "positives": 0, "labelled": 0},
        {"lead": 0.0, "positives": -1, "labelled": 0},
        {"lead": 0.0, "positives": 0, "labelled": 10**400},  # would overflow the rate
        {"lead": 0.0, "positives": 2**62, "labelled": 2**62},  # the rate would round to 1
        {"lead": 0.0, "positives": 0, "labelled": MAX_LABELLED + 1},
        {"lead": 0.0, "positives": 0},
        {"lead": "0", "positives": 0, "labelled": 0},
        {"lead": 0.0, "positives": 0, "labelled": 0, "weight": 1.0},
        [0.0, 0, 0],
    ],
)
def test_a_damaged_state_is_refused(tree: Any) -> None:
    with pytest.raises(CheckpointRejected):
        BaseRateAverage.from_state(tree, "base_rate", DEFAULT_BASE_RATE_ODDS)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["lead", "positives", "labelled", "other"]),
        st.one_of(st.floats(), st.integers(), st.none(), st.text(max_size=3), st.booleans()),
    )
)
def test_any_state_is_read_or_refused_never_crashes(tree: dict[str, Any]) -> None:
    try:
        average = BaseRateAverage.from_state(tree, "base_rate", DEFAULT_BASE_RATE_ODDS)
    except CheckpointRejected:
        return
    weight = average.network_weight()
    assert 0.0 < weight <= 1.0 and 0.0 < average.rate < 1.0
    average.learn(np.array([1.0, 0.0]), np.array([0.5, 0.5]))
    assert LOG_ODDS_FLOOR - DEFAULT_BASE_RATE_ODDS <= average.lead <= LEAD_CAP


# ---------------------------------------------------------------------- in the learner


def test_the_learners_predictions_are_the_network_averaged_with_the_base_rate() -> None:
    model = learner(base_rate_odds=1.0)
    for chunk in stream()[:5]:
        weight, rate = model.base_rate.network_weight(), model.base_rate.rate
        predicted = model.predict_batch(chunk)
        network = model._pending.probabilities
        np.testing.assert_allclose(predicted, weight * network + (1 - weight) * rate, rtol=0, atol=1e-15)
        assert 0.3 < weight < 1.0  # the average mattered
        model.learn_batch(chunk)
    assert model.base_rate.labelled == sum(len(chunk) for chunk in stream()[:5])


def test_on_a_stream_with_signal_the_predictions_are_the_networks() -> None:
    model = learner()
    own = []  # per batch: were the predictions the network's own?
    for chunk in list(batches(temporal_stream(3000, n_keys=3, seed=4), 64)):
        own.append(model.predict_batch(chunk) is model._pending.probabilities)
        model.learn_batch(chunk)
    first = own.index(True)
    assert 0 < first < 15 and all(own[first:])  # from a few batches on, and for good


def test_on_a_stream_without_signal_the_lstm_comes_close_to_the_base_rate() -> None:
    events = suite_stream("no_signal_unkeyed", 12_000, 0).events
    labels = np.array([event.label for event in events], dtype=np.float64)
    chunks = list(batches(events, 64))
    averaged, alone = learner(), learner(base_rate_odds=0)
    with_average, without = learn(averaged, chunks), learn(alone, chunks)
    rates = (np.cumsum(labels) - labels + 0.5) / (np.arange(labels.size) + 1)  # the rate so far
    assert averaged.base_rate.network_weight() < 0.5
    assert log_loss(with_average, labels) < log_loss(without, labels)
    assert log_loss(with_average, labels) < log_loss(rates, labels) + 0.002


def test_a_resumed_learner_goes_on_with_the_average_where_it_was() -> None:
    resumed, whole, saved = resumed_after_four_batches(base_rate_odds=1.0)
    assert saved.base_rate.labelled == 128 and saved.base_rate.lead != 0
    assert resumed.base_rate.to_state() == whole.base_rate.to_state()


def test_a_checkpoint_from_before_the_average_resumes_without_it() -> None:
    state = learner().to_state()
    del state["hyperparameters"]["base_rate_odds"], state["base_rate"]
    old = LSTMLearner.from_state(state, "learner")
    assert old.base_rate_odds == 0 and old.base_rate.network_weight() == 1.0
    for missing in ("hyperparameters", "state"):  # one of the two without the other: damaged
        state = learner().to_state()
        if missing == "state":
            del state["base_rate"]
        else:
            del state["hyperparameters"]["base_rate_odds"]
        with pytest.raises(CheckpointRejected, match="base rate"):
            LSTMLearner.from_state(state, "learner")


def test_it_may_change_on_resume_and_0_turns_it_off() -> None:
    turned_off_on_resume("base_rate_odds", DEFAULT_BASE_RATE_ODDS)
    losing = learner(base_rate_odds=20.0)
    losing.base_rate.lead = -30.0  # at the floor of the log-odds
    losing.change_settings({"base_rate_odds": 5.0})  # its lead is brought within the new bounds
    assert losing.base_rate_odds == losing.base_rate.odds == 5.0 and losing.base_rate.lead == -15.0
    for bad in (-1.0, math.nan, "5"):
        with pytest.raises(ConfigError, match="base_rate_odds"):
            losing.change_settings({"learning_rate": 0.5, "base_rate_odds": bad})
    assert losing.base_rate_odds == 5.0 and losing.learning_rate == 0.01


BAD_ODDS = [-1, -0.5, math.inf, math.nan, MAX_BASE_RATE_ODDS + 1, True, "10", None]


@pytest.mark.parametrize("bad", BAD_ODDS)
def test_the_learner_and_its_checkpoint_refuse_odds_out_of_bounds(bad: object) -> None:
    with pytest.raises(ConfigError, match="base_rate_odds"):
        learner(base_rate_odds=bad)
    assert_checkpoint_refuses("base_rate_odds", bad)


def test_the_setting_the_learner_and_its_checkpoint_share_one_bound() -> None:
    assert [odds_setting(text) for text in ("0", "2.5", "10", f"{MAX_BASE_RATE_ODDS:g}")] == [
        0.0,
        2.5,
        10.0,
        MAX_BASE_RATE_ODDS,
    ]
    for text in ("-1", "nan", "inf", f"{MAX_BASE_RATE_ODDS + 1:g}", "many"):
        with pytest.raises(ValueError):
            odds_setting(text)
    top = learner(base_rate_odds=MAX_BASE_RATE_ODDS)
    assert LSTMLearner.from_state(top.to_state(), "learner").base_rate_odds == MAX_BASE_RATE_ODDS
    with pytest.raises(ConfigError, match=r"^STREAM_LSTM_BASE_RATE_ODDS=1001: base_rate_odds"):
        resolve_settings(run_args(), RUN_SETTINGS, environ={"STREAM_LSTM_BASE_RATE_ODDS": "1001"})
    assert resolve_settings(run_args(), RUN_SETTINGS, environ={})["base_rate_odds"] == DEFAULT_BASE_RATE_ODDS
