"""The second process of `stream-lstm evaluate`: same results as one process, failures reported."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from stream_lstm.errors import EvaluationError
from stream_lstm.evaluation.mixture import MIXTURE
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_evaluator
from stream_lstm.evaluation.results import combine_results
from stream_lstm.models.build import build_models
from stream_lstm.offline.csv_source import CsvSpec
from stream_lstm.offline.evaluate import evaluate_stream
from stream_lstm.offline.generator import temporal_stream, write_csv
from stream_lstm.offline.side_lane import SideLane


@pytest.fixture
def stream_csv(tmp_path: Path) -> Path:
    path = tmp_path / "stream.csv"
    write_csv(temporal_stream(3000, n_keys=20, seed=2), path)
    return path


def _lane(spec: CsvSpec, names: list[str]) -> SideLane:
    return SideLane(spec, names, batch_size=32, window=100, max_keys=1000, keep_trace=True)


def test_side_lane_results_merge_in_the_asked_order(stream_csv: Path) -> None:
    spec = CsvSpec(str(stream_csv), label="label", key="key", ts="ts", limit=2500)
    lane = _lane(spec, ["logreg"])
    try:
        evaluator = PrequentialEvaluator(
            build_models(["no_change"], max_keys=1000), window=100, max_keys=1000, keep_trace=True
        )
        evaluation = evaluate_stream(
            spec.events(), evaluator, batch_size=32, side_lane=lane, order=["logreg", "no_change"]
        )
        here = evaluation.results
    finally:
        lane.close()
    alone = PrequentialEvaluator(
        build_models(["logreg", "no_change"], max_keys=1000), window=100, max_keys=1000, keep_trace=True
    )
    evaluate_stream(spec.events(), alone, batch_size=32)
    assert list(here.scores) == ["logreg", "no_change"] and here.events == alone.events == 2500
    for name in alone.scores:
        assert here.scores[name].whole() == alone.scores[name].whole()
        assert (here.rolling_accuracy_curve(name) == alone.rolling_accuracy_curve(name)).all()


def test_the_side_process_reads_no_event_before_it_is_told_to_begin(stream_csv: Path) -> None:
    """It starts early, so that its start-up overlaps the first process's, but the clock starts
    with begin: a file replaced after it is ready and before begin is the one it reads."""
    lane = _lane(CsvSpec(str(stream_csv), label="label", key="key"), ["no_change"])
    try:
        deadline = time.monotonic() + 60
        while not lane.ready():
            assert time.monotonic() < deadline, "the side process never got ready"
            time.sleep(0.05)
        shorter = stream_csv.with_name("shorter.csv")
        write_csv(temporal_stream(120, n_keys=20, seed=2), shorter)
        os.replace(shorter, stream_csv)
        assert lane.results().events == 120
    finally:
        lane.close()


def test_an_error_in_the_side_process_is_reported_with_its_traceback(tmp_path: Path) -> None:
    lane = _lane(CsvSpec(str(tmp_path / "gone.csv"), label="label"), ["logreg"])
    try:
        with pytest.raises(EvaluationError, match=r"(?s)evaluating logreg failed.*no such file"):
            lane.results()
    finally:
        lane.close()


def test_a_killed_side_process_is_an_error_not_a_hang(stream_csv: Path) -> None:
    lane = _lane(CsvSpec(str(stream_csv), label="label", key="key"), ["logreg"])
    try:
        os.kill(lane.pid, signal.SIGKILL)
        with pytest.raises(EvaluationError, match="exited with code -9 before sending its scores"):
            lane.results()
    finally:
        lane.close()


def test_close_stops_a_side_process_that_waits_to_begin(stream_csv: Path) -> None:
    lane = _lane(CsvSpec(str(stream_csv), label="label", key="key"), ["logreg"])
    assert lane.running
    lane.close()
    deadline = time.monotonic() + 10
    while lane.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not lane.running


def test_close_stops_a_side_process_in_the_middle_of_its_evaluation(stream_csv: Path) -> None:
    """As when the LSTM fails mid-run: the second process is stopped, not waited for."""
    big = stream_csv.with_name("big.csv")
    write_csv(temporal_stream(100_000, n_keys=20, seed=3), big)
    lane = SideLane(
        CsvSpec(str(big), label="label", key="key"),
        ["logreg_lags"],
        batch_size=32,
        window=100,
        max_keys=1000,
        keep_trace=False,
        send_probabilities=True,
    )
    try:
        lane.begin()
        deadline = time.monotonic() + 60
        while not lane.take_probabilities():  # its first batches are done: it is evaluating
            assert time.monotonic() < deadline, "the side process sent no probabilities"
            lane.check()
            time.sleep(0.01)
    finally:
        lane.close()
    assert not lane.running
    assert lane.exitcode == -signal.SIGTERM  # stopped at once, neither finished nor killed later


def test_a_side_process_that_fails_to_build_its_models_is_an_error_before_the_clock(
    stream_csv: Path,
) -> None:
    lane = _lane(CsvSpec(str(stream_csv), label="label", key="key"), ["no_such_model"])
    try:
        with pytest.raises(EvaluationError, match=r"(?s)evaluating no_such_model failed.*ConfigError"):
            evaluate_stream(
                CsvSpec(str(stream_csv), label="label", key="key").events(),
                PrequentialEvaluator(build_models(["no_change"])),
                batch_size=32,
                side_lane=lane,
            )
    finally:
        lane.close()


def test_the_clock_starts_after_the_side_process_is_ready_and_before_it_begins(
    stream_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its start-up is left out of the time; its reading of the file is not."""
    calls: list[str] = []

    class Stop(Exception):
        pass

    class RecordingLane:
        def wait_until_ready(self) -> None:
            calls.append("ready")

        def begin(self) -> None:
            calls.append("begin")
            raise Stop

    clock = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: calls.append("clock") or clock())
    with pytest.raises(Stop):
        evaluate_stream(
            CsvSpec(str(stream_csv), label="label", key="key").events(),
            PrequentialEvaluator(build_models(["no_change"])),
            batch_size=32,
            side_lane=RecordingLane(),  # type: ignore[arg-type]
        )
    assert calls == ["ready", "clock", "begin"]


def test_results_of_other_events_are_refused(stream_csv: Path) -> None:
    spec = CsvSpec(str(stream_csv), label="label", key="key")
    first = PrequentialEvaluator(build_models(["logreg"]))
    evaluate_stream(spec.events(), first, batch_size=32)
    second = PrequentialEvaluator(build_models(["no_change"]))
    evaluate_stream(CsvSpec(spec.path, label="label", key="key", limit=100).events(), second, batch_size=32)
    with pytest.raises(EvaluationError, match="did the file change while it was read"):
        combine_results(second.results(), first.results())
    again = PrequentialEvaluator(build_models(["logreg"]))
    evaluate_stream(spec.events(), again, batch_size=32)
    with pytest.raises(EvaluationError, match="logreg were evaluated twice"):
        combine_results(again.results(), first.results())


def test_a_side_lane_can_be_started_outside_the_main_thread(stream_csv: Path) -> None:
    """Only the main thread may change signal handlers: elsewhere the lane starts without."""
    import threading

    outcome: list[object] = []

    def run() -> None:
        lane = _lane(CsvSpec(str(stream_csv), label="label", key="key", limit=500), ["no_change"])
        try:
            outcome.append(lane.results().events)
        except Exception as error:
            outcome.append(error)
        finally:
            lane.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert outcome == [500]


def test_the_mixture_mixes_the_side_lanes_models_as_one_process_would(stream_csv: Path) -> None:
    spec = CsvSpec(str(stream_csv), label="label", key="key", ts="ts", limit=2500)
    names = ["logreg", "no_change", MIXTURE]
    lane = SideLane(
        spec, ["logreg"], batch_size=32, window=100, max_keys=1000, keep_trace=True, send_probabilities=True
    )
    try:
        evaluator = build_evaluator(names, window=100, max_keys=1000, keep_trace=True, elsewhere=["logreg"])
        assert list(evaluator.models) == ["no_change"]
        here = evaluate_stream(spec.events(), evaluator, batch_size=32, side_lane=lane, order=names).results
    finally:
        lane.close()
    alone = build_evaluator(names, window=100, max_keys=1000, keep_trace=True)
    evaluate_stream(spec.events(), alone, batch_size=32)
    assert list(here.scores) == names and evaluator.waiting_batches() == 0
    for name in names:
        assert here.scores[name].whole() == alone.scores[name].whole(), name
        assert (here.rolling_accuracy_curve(name) == alone.rolling_accuracy_curve(name)).all()
