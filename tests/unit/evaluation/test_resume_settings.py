"""``category_buckets`` is a size of the models' state: a resume may not change it, except that a
learner without category inputs (every checkpoint from before categorical features) resumes as it
is, with a warning, so that an upgraded service starts with its default settings. Baselines and
the mixture may come or go; the LSTM may not."""

from __future__ import annotations

from typing import Any

import pytest

from stream_lstm.errors import ConfigError
from stream_lstm.evaluation.mixture import MIXTURE
from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.evaluation.resume_settings import FIXED, current_learner_settings, resume_with_settings
from stream_lstm.messages.categories import DEFAULT_CATEGORY_BUCKETS
from stream_lstm.messages.events import Event
from stream_lstm.models.build import build_models, model_from_state

LSTM = {"hidden_size": 8, "device": "cpu"}


def evaluator_of(models: tuple[str, ...], **lstm: Any) -> PrequentialEvaluator:
    evaluator = PrequentialEvaluator(build_models(models, max_keys=64, lstm={**LSTM, **lstm}), max_keys=64)
    evaluator.process([Event(key="a", features={"x": 1.0}, categories={"colour": "red"}, label=1)] * 4)
    return evaluator


def current(models: tuple[str, ...], buckets: int) -> dict[str, Any]:
    settings = {"models": models, "window": 1000, "max_keys": 64}
    return current_learner_settings(settings, {**LSTM, "category_buckets": buckets})


@pytest.mark.parametrize("models", [("lstm", "logreg"), ("logreg", "no_change")])
def test_other_category_buckets_are_refused(models: tuple[str, ...]) -> None:
    assert "category_buckets" in FIXED
    evaluator = evaluator_of(models)
    assert evaluator.learner_settings()["category_buckets"] == DEFAULT_CATEGORY_BUCKETS
    assert resume_with_settings(evaluator, current(models, DEFAULT_CATEGORY_BUCKETS), "it") is evaluator
    with pytest.raises(ConfigError, match=f"category_buckets: checkpoint {DEFAULT_CATEGORY_BUCKETS}, now 8"):
        resume_with_settings(evaluator, current(models, 8), "the checkpoint")


def test_a_checkpoint_from_before_categories_resumes_as_it_is_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    models = ("lstm", "logreg")
    evaluator = evaluator_of(models, category_buckets=0)
    for model in evaluator.models.values():  # as a checkpoint of that version holds them
        state = model.to_state()
        state.get("hyperparameters", state).pop("category_buckets")
        state.pop("category_weights", None)
        evaluator.models[state["kind"]] = model_from_state(state, "checkpoint")
    with caplog.at_level("WARNING"):
        assert (
            resume_with_settings(evaluator, current(models, DEFAULT_CATEGORY_BUCKETS), "the checkpoint")
            is evaluator
        )
    assert "the checkpoint has no category inputs (category_buckets 0, now 16)" in caplog.text
    assert evaluator.learner_settings()["category_buckets"] == 0
    assert evaluator.models["lstm"].category_buckets == 0
    assert resume_with_settings(evaluator, current(models, 0), "the checkpoint") is evaluator
    # A checkpoint with category inputs keeps its number of them.
    with pytest.raises(ConfigError, match="category_buckets: checkpoint 16, now 0"):
        resume_with_settings(evaluator_of(models), current(models, 0), "the checkpoint")


def test_the_mixture_may_be_added_to_or_dropped_from_a_resumed_checkpoint() -> None:
    evaluator = evaluator_of(("logreg", "no_change"))  # as written before the mixture
    with_mix = current(("logreg", MIXTURE, "no_change"), DEFAULT_CATEGORY_BUCKETS)
    assert resume_with_settings(evaluator, with_mix, "it") is evaluator
    assert evaluator.names == ["logreg", "no_change", MIXTURE] and evaluator.mixture is not None
    assert evaluator.scores[MIXTURE].count == 0
    resume_with_settings(evaluator, current(("logreg", "no_change"), DEFAULT_CATEGORY_BUCKETS), "it")
    assert evaluator.mixture is None and list(evaluator.scores) == ["logreg", "no_change"]


def test_baselines_may_be_added_fresh_or_dropped_while_the_lstm_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    evaluator = evaluator_of(("lstm", "logreg", "no_change"))  # as written before logreg_lags
    lstm, learned = evaluator.models["lstm"], evaluator.scores["logreg"].count
    defaults = ("lstm", "logreg", "logreg_lags", "no_change", MIXTURE)
    with caplog.at_level("INFO"):
        assert resume_with_settings(evaluator, current(defaults, DEFAULT_CATEGORY_BUCKETS), "it") is evaluator
    assert "it has no logreg_lags: started fresh" in caplog.text
    assert evaluator.names == list(defaults) and evaluator.models["lstm"] is lstm
    assert evaluator.scores["logreg"].count == learned == 4 and evaluator.scores["logreg_lags"].count == 0
    assert evaluator.mixture is not None and list(evaluator.mixture.experts) == list(defaults[:-1])
    added = evaluator.models["logreg_lags"]
    assert (added.max_keys, added.category_buckets) == (64, DEFAULT_CATEGORY_BUCKETS)
    evaluator.process([Event(key="a", features={"x": 2.0}, label=0)] * 2)  # the new set runs
    assert evaluator.scores["logreg_lags"].count == 2
    resume_with_settings(evaluator, current(("lstm", "no_change"), DEFAULT_CATEGORY_BUCKETS), "it")
    assert evaluator.names == ["lstm", "no_change"] and evaluator.mixture is None
    assert evaluator.scores["lstm"].count == 6


@pytest.mark.parametrize(
    ("saved", "now"), [(("logreg", "no_change"), ("lstm", "no_change")), (("lstm", "logreg"), ("logreg",))]
)
def test_the_lstm_may_not_come_or_go(saved: tuple[str, ...], now: tuple[str, ...]) -> None:
    evaluator = evaluator_of(saved)
    with pytest.raises(ConfigError, match="models: checkpoint"):
        resume_with_settings(evaluator, current(now, DEFAULT_CATEGORY_BUCKETS), "it")
    assert evaluator.names == list(saved)


def test_a_fixed_setting_is_compared_before_a_baseline_is_added() -> None:
    evaluator = evaluator_of(("logreg", "no_change"))
    now = current(("logreg_lags", "logreg", "no_change"), DEFAULT_CATEGORY_BUCKETS)
    now["max_features"] = 8
    with pytest.raises(ConfigError, match="max_features: checkpoint 32, now 8"):
        resume_with_settings(evaluator, now, "it")
    assert evaluator.names == ["logreg", "no_change"]  # nothing changed before the refusal


def test_an_added_baseline_gets_the_checkpoints_shared_settings() -> None:
    evaluator = evaluator_of(("lstm", "logreg", "no_change"), category_buckets=0)  # as before categories
    resume_with_settings(evaluator, current(("lstm", "logreg", "logreg_lags", "no_change"), 16), "it")
    buckets = {name: getattr(model, "category_buckets", None) for name, model in evaluator.models.items()}
    assert buckets == {"lstm": 0, "logreg": 0, "logreg_lags": 0, "no_change": None}


def test_an_added_model_reports_its_own_events_per_second() -> None:
    evaluator = evaluator_of(("logreg", "no_change"))
    resume_with_settings(evaluator, current(("logreg", "logreg_lags", "no_change", MIXTURE), 16), "it")
    evaluator.process([Event(key="a", features={"x": 2.0}, label=0)] * 6)
    assert evaluator.started_at == {"logreg_lags": 4, MIXTURE: 4} and evaluator.events == 10
    copy = PrequentialEvaluator.from_state(evaluator.to_state(), "evaluator")
    assert copy.started_at == evaluator.started_at
    report = copy.report()
    for name in ("logreg_lags", MIXTURE):  # 6 events in its own seconds, not the evaluator's 10
        assert report[name]["events_per_second"] == pytest.approx(6 / copy.seconds[name])


def test_the_same_models_in_another_order_keep_the_checkpoints_order_and_mixture() -> None:
    evaluator = evaluator_of(("logreg", "no_change"))
    resume_with_settings(evaluator, current(("logreg", "no_change", MIXTURE), 16), "it")
    evaluator.process([Event(key="a", features={"x": 2.0}, label=0)] * 3)
    mixture = evaluator.mixture
    resume_with_settings(evaluator, current((MIXTURE, "no_change", "logreg"), 16), "it")
    assert evaluator.names == ["logreg", "no_change", MIXTURE] and evaluator.mixture is mixture


def test_trend_scales_are_fixed_but_a_checkpoint_from_before_them_resumes_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert "trend_scales" in FIXED
    models = ("lstm", "logreg_lags")
    now = {**current(models, DEFAULT_CATEGORY_BUCKETS), "trend_scales": 3}
    with pytest.raises(ConfigError, match="trend_scales: checkpoint 2, now 3"):
        resume_with_settings(evaluator_of(models, trend_scales=2), now, "the checkpoint")
    evaluator = evaluator_of(models, trend_scales=0)
    for model in evaluator.models.values():  # as a checkpoint of that version holds them
        state = model.to_state()
        if "hyperparameters" in state:
            state["hyperparameters"].pop("trend_scales")
            state["keys"].pop("trend")
        else:
            del state["trend_scales"], state["trend_weights"]
            for name in ("trend_counts", "trend_scale", "trend_index", "trend_values"):
                del state["key_state"][name]
        evaluator.models[state["kind"]] = model_from_state(state, "checkpoint")
    with caplog.at_level("WARNING"):
        assert resume_with_settings(evaluator, now, "the checkpoint") is evaluator
    assert "the checkpoint has no trend inputs (trend_scales 0, now 3)" in caplog.text
    assert evaluator.learner_settings()["trend_scales"] == 0
    # Its baseline keeps learning without them; a baseline added on resume gets the checkpoint's.
    evaluator.process([Event(key="a", features={"x": 2.0}, label=0)] * 3)
    evaluator = evaluator_of(("lstm",), trend_scales=0)
    resume_with_settings(evaluator, {**now, "trend_scales": 0}, "it")
    assert evaluator.models["logreg_lags"].trend_scales == 0
    # A checkpoint without a model that has trend inputs: the added baseline gets the current number.
    evaluator = evaluator_of(("logreg",))
    resume_with_settings(evaluator, {**current(("logreg", "logreg_lags"), 16), "trend_scales": 2}, "it")
    assert evaluator.models["logreg_lags"].trend_scales == 2


def test_the_stream_rate_is_fixed_but_a_checkpoint_from_before_it_resumes_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert "stream_rate_half_life" in FIXED
    models = ("lstm", "logreg_lags")
    now = {**current(models, DEFAULT_CATEGORY_BUCKETS), "stream_rate_half_life": 14.0}
    with pytest.raises(ConfigError, match=r"stream_rate_half_life: checkpoint 7\.0, now 14\.0"):
        resume_with_settings(evaluator_of(models, stream_rate_half_life=7), now, "the checkpoint")
    evaluator = evaluator_of(models, stream_rate_half_life=0)
    for model in evaluator.models.values():  # as a checkpoint of that version holds them
        state = model.to_state()
        del state["stream_rate"]
        if "hyperparameters" in state:
            state["hyperparameters"].pop("stream_rate_half_life")
        else:
            del state["stream_rate_half_life"]
        evaluator.models[state["kind"]] = model_from_state(state, "checkpoint")
    with caplog.at_level("WARNING"):
        assert resume_with_settings(evaluator, now, "the checkpoint") is evaluator
    assert "the checkpoint has no stream rate inputs (stream_rate_half_life 0" in caplog.text
    assert evaluator.learner_settings()["stream_rate_half_life"] == 0
    # A baseline added on resume gets the checkpoint's half-life.
    evaluator = evaluator_of(("lstm",), stream_rate_half_life=0)
    resume_with_settings(evaluator, {**now, "stream_rate_half_life": 0.0}, "it")
    assert evaluator.models["logreg_lags"].stream_rate.half_life == 0
