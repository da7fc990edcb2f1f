"""The LSTM learns what the baselines cannot: per-key temporal structure, and Elec2."""

from __future__ import annotations

import json
from pathlib import Path

from stream_lstm.cli.main import main
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.offline.evaluate import evaluate_stream
from stream_lstm.offline.generator import temporal_stream


def test_lstm_learns_labels_that_depend_on_earlier_events_of_the_same_key() -> None:
    evaluator = PrequentialEvaluator(build_models(["lstm", "logreg", "no_change"], lstm={"device": "cpu"}))
    evaluate_stream(temporal_stream(20_000, n_keys=100, seed=21), evaluator, batch_size=32)
    report = evaluator.report()
    assert report["lstm"]["accuracy"] >= 0.85, report["lstm"]
    assert 0.45 <= report["logreg"]["accuracy"] <= 0.55, report["logreg"]  # current features: chance
    assert report["lstm"]["kappa_temporal"] > 0.5


def test_lstm_beats_both_baselines_on_elec2_with_default_settings(elec2_path: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "elec2.json"
    assert (
        main(["evaluate", str(elec2_path), "--label", "class", "--json", str(report_path), "--no-progress"])
        == 0
    )
    report = json.loads(report_path.read_text())
    models = report["models"]
    assert report["events"] == 45_312 and report["skipped"] == 0
    for baseline in ("logreg", "no_change"):
        assert models["lstm"]["accuracy"] > models[baseline]["accuracy"], baseline
        assert models["lstm"]["log_loss"] < models[baseline]["log_loss"], baseline
    assert models["lstm"]["accuracy"] >= 0.90, models["lstm"]
    assert models["lstm"]["kappa_temporal"] > 0
