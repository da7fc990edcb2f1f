"""Models run in one process and scored in another: an evaluator with ``outside`` models scores
them from their probabilities exactly as if it ran them, and one ``scored_elsewhere`` only runs
its models."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from stream_lstm.errors import ConfigError, EvaluationError
from stream_lstm.evaluation.mixture import MIXTURE, FixedShareMixture
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_evaluator, build_models
from stream_lstm.evaluation.results import EvaluationResults, combine_results
from stream_lstm.messages.events import Event
from stream_lstm.offline.batches import batches
from stream_lstm.offline.generator import temporal_stream

SMALL_LSTM = {"hidden_size": 4, "device": "cpu"}
NAMES = ["logreg", "lstm", "no_change", MIXTURE]
SETTINGS = {"window": 40, "max_keys": 100, "keep_trace": True, "lstm": SMALL_LSTM}


def _events() -> list[Event]:
    """A keyed stream in which every fifth event has no label."""
    events = temporal_stream(600, n_keys=4, seed=3)
    return [dataclasses.replace(e, label=None) if i % 5 == 0 else e for i, e in enumerate(events)]


def _run_apart(events: list[Event], ahead: bool) -> tuple[PrequentialEvaluator, PrequentialEvaluator]:
    """The LSTM run by one evaluator, scored (and mixed) by another, its probabilities arriving
    in chunks of three batches: all before the scoring evaluator's batches (``ahead``) or after."""
    runner = build_evaluator(["lstm"], **SETTINGS, scored_elsewhere=True)
    scorer = build_evaluator(NAMES, **SETTINGS, outside=["lstm"])
    sent = []
    for batch in batches(events, 16):
        labelled = np.array([event.label is not None for event in batch])
        sent.append(runner.process(batch)["lstm"][labelled])
    chunks = [{"lstm": np.concatenate(sent[start : start + 3])} for start in range(0, len(sent), 3)]
    if ahead:
        for chunk in chunks:
            scorer.take_outside(chunk)
    for batch in batches(events, 16):
        scorer.process(batch)
    assert scorer.waiting_batches() == (0 if ahead else len(sent) - sum(s.size == 0 for s in sent))
    if not ahead:
        for chunk in chunks:
            scorer.take_outside(chunk)
    assert scorer.waiting_batches() == 0
    return runner, scorer


@pytest.mark.parametrize("ahead", [True, False], ids=["ahead", "behind"])
def test_an_outside_model_is_scored_exactly_as_if_it_ran_there(ahead: bool) -> None:
    events = _events()
    _, scorer = _run_apart(events, ahead)
    alone = build_evaluator(NAMES, **SETTINGS)
    for batch in batches(events, 16):
        alone.process(batch)
    assert scorer.names == ["logreg", "no_change", "lstm", MIXTURE]
    assert scorer.labelled == alone.labelled == 480 and scorer.events == 600
    for name in NAMES:
        assert scorer.scores[name].whole() == alone.scores[name].whole(), name
        assert scorer.scores[name].rolling() == alone.scores[name].rolling(), name
        np.testing.assert_array_equal(
            scorer.rolling_accuracy_curve(name), alone.rolling_accuracy_curve(name), err_msg=name
        )
    assert scorer.mixture is not None and alone.mixture is not None
    np.testing.assert_array_equal(scorer.mixture.weights, alone.mixture.weights)
    assert "lstm" not in scorer.seconds  # its time is the runner's
    assert math.isnan(scorer.report()["lstm"]["events_per_second"])


def test_combined_the_scores_are_the_scorers_and_the_seconds_the_runners() -> None:
    events = _events()
    runner, scorer = _run_apart(events, ahead=False)
    both = combine_results(runner.results(), scorer.results(), NAMES)
    assert list(both.scores) == list(both.seconds) == list(both.report()) == NAMES
    assert both.seconds["lstm"] == runner.seconds["lstm"] > 0
    assert both.guard_stats()["lstm"] == runner.guard_stats()["lstm"]
    assert both.report()["lstm"]["events_per_second"] == 600 / runner.seconds["lstm"]
    assert both.report()["lstm"]["accuracy"] == scorer.report()["lstm"]["accuracy"]
    with pytest.raises(EvaluationError, match="lstm were evaluated twice"):
        combine_results(runner.results(), runner.results())


def test_an_evaluator_scored_elsewhere_keeps_no_score_and_does_not_use_its_reference() -> None:
    runner = build_evaluator(["lstm", "no_change"], **SETTINGS, scored_elsewhere=True)
    for batch in batches(_events(), 16):
        runner.process(batch)
    results = runner.results()
    assert (results.events, results.labelled) == (600, 480)
    assert results.scores == results.trace == {} and runner.report() == {}
    assert list(results.seconds) == ["lstm", "no_change"] and results.seconds["lstm"] > 0
    assert "lstm" in results.guard_stats()
    assert not runner.reference.tracked_keys()
    assert isinstance(results, EvaluationResults)


def test_evaluators_that_share_their_models_with_another_process_are_not_saved() -> None:
    scorer = build_evaluator(["logreg", "no_change"], outside=["no_change"])
    runner = build_evaluator(["no_change"], scored_elsewhere=True)
    for evaluator in (scorer, runner):
        evaluator.process([Event(key="a", label=1)])
        with pytest.raises(EvaluationError, match="is not saved"):
            evaluator.to_state()
        with pytest.raises(ConfigError, match="shares its models with another process"):
            evaluator.change_models(["logreg"], build_models(["logreg"]))
        with pytest.raises(ConfigError, match="shares its models with another process"):
            evaluator.set_mixture(None)


def test_outside_models_that_do_not_fit_are_refused() -> None:
    models = build_models(["logreg"])
    with pytest.raises(ConfigError, match="distinct models not run here"):
        PrequentialEvaluator(models, outside=["logreg"])
    with pytest.raises(ConfigError, match="distinct models not run here"):
        PrequentialEvaluator(models, outside=["lstm", "lstm"])
    with pytest.raises(ConfigError, match="mixes lstm, which is neither run nor scored here"):
        PrequentialEvaluator(models, mixture=FixedShareMixture(["logreg", "lstm"]))
    with pytest.raises(ConfigError, match="scores nothing has no mixture"):
        PrequentialEvaluator(models, outside=["lstm"], scored_elsewhere=True)
    with pytest.raises(ConfigError, match="must be in names"):
        build_evaluator(["logreg", MIXTURE], outside=["lstm"])
    scorer = PrequentialEvaluator(models, outside=["lstm"])
    with pytest.raises(ConfigError, match="no_change is not a model scored here"):
        scorer.take_outside({"no_change": np.zeros(1)})
