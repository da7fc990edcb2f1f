"""The second process of `stream-lstm evaluate`: same results as one process, failures reported."""

from __future__ import annotations

import io
import itertools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stream_lstm.errors import ConfigError, EvaluationError
from stream_lstm.evaluation.mixture import MIXTURE
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_evaluator
from stream_lstm.evaluation.results import EvaluationResults, combine_results
from stream_lstm.models.build import build_models
from stream_lstm.offline.batches import batches
from stream_lstm.offline.csv_source import CsvSpec
from stream_lstm.offline.evaluate import evaluate_stream
from stream_lstm.offline.generator import temporal_stream, write_csv
from stream_lstm.offline.side_lane import CHUNK_BATCHES, SideLane, _Arrivals
from stream_lstm.telemetry.progress import ProgressLine


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
    """As when the LSTM fails mid-run: the second process is stopped, not waited for.

    It takes the probabilities sent to its mixture only after it has evaluated a batch, so once
    more of them got through than a pipe holds (64 kB on Linux), it is evaluating; it then has
    most of 100,000 events still to go."""
    big = stream_csv.with_name("big.csv")
    write_csv(temporal_stream(100_000, n_keys=20, seed=3), big)
    lane = _mixing_lane(CsvSpec(str(big), label="label", key="key"), baseline="logreg_lags")
    sent: list[int] = []

    def send() -> None:
        for _ in range(2 * CHUNK_BATCHES * 128):  # 128 chunks of 4 kB: 512 kB
            lane.send_probabilities({"no_change": np.full(32, 0.5)})
        sent.append(1)

    sender = threading.Thread(target=send, daemon=True)
    try:
        lane.wait_until_ready()
        sender.start()
        sender.join(timeout=60)
        assert sent, "the side process took no probabilities: it is not evaluating"
        assert lane.running
    finally:
        lane.close()
    assert not lane.running
    assert lane.exitcode == -signal.SIGTERM  # stopped at once, neither finished nor killed later
    sender.join(timeout=10)


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
        elsewhere = ()

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


def test_the_clock_stops_only_once_the_side_process_has_answered(
    stream_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting for the second process's results is part of the time of the run."""
    spec = CsvSpec(str(stream_csv), label="label", key="key", limit=500)
    theirs = PrequentialEvaluator(build_models(["logreg"]))
    evaluate_stream(spec.events(), theirs, batch_size=32)
    waited = 1000.0
    ticks = itertools.count()
    offset = [0.0]

    class AnsweringLane:
        elsewhere = ()
        names = ("logreg",)

        def wait_until_ready(self) -> None:
            pass

        def begin(self) -> None:
            pass

        def check(self) -> None:
            pass

        def results(self) -> EvaluationResults:
            offset[0] += waited  # the answer comes this much later on the clock
            return theirs.results()

    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks) + offset[0])
    evaluation = evaluate_stream(
        spec.events(),
        PrequentialEvaluator(build_models(["no_change"])),
        batch_size=32,
        side_lane=AnsweringLane(),  # type: ignore[arg-type]
    )
    assert evaluation.seconds > waited
    assert list(evaluation.results.scores) == ["no_change", "logreg"]


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


def test_the_side_lanes_mixture_mixes_the_first_process_models_as_one_process_would(
    stream_csv: Path,
) -> None:
    """The first process sends its model's probabilities; the second scores them, and its mixture
    mixes them with its models', in the order of the names, exactly as one process would."""
    spec = CsvSpec(str(stream_csv), label="label", key="key", ts="ts", limit=2500)
    names = ["logreg", "no_change", "logreg_lags", MIXTURE]
    here, alone, lane = _no_change_first_and_alone(spec, names, batch_size=32, window=100, max_keys=1000)
    assert lane.names == ("logreg", "logreg_lags", MIXTURE)
    assert list(here.scores) == names and here.labelled == alone.labelled > 0
    for name in names:
        assert here.scores[name].whole() == alone.scores[name].whole(), name
        assert here.scores[name].rolling() == alone.scores[name].rolling(), name
        assert (here.rolling_accuracy_curve(name) == alone.rolling_accuracy_curve(name)).all(), name


def test_events_without_a_label_are_left_out_of_the_probabilities_sent(tmp_path: Path) -> None:
    """Only labelled events are scored and mixed: the first process sends theirs alone."""
    path = tmp_path / "some_labelled.csv"
    rows = ["key,x,label"] + [f"k{i % 3},{i % 7},{'' if i % 4 == 0 else (i // 2) % 2}" for i in range(700)]
    path.write_text("\n".join(rows) + "\n")
    spec = CsvSpec(str(path), label="label", key="key")
    names = ["no_change", "logreg", MIXTURE]
    here, alone, _ = _no_change_first_and_alone(spec, names, batch_size=16, window=50, max_keys=100)
    assert 0 < here.labelled == alone.labelled < here.events == 700
    for name in names:
        assert here.scores[name].whole() == alone.scores[name].whole(), name
        assert (here.rolling_accuracy_curve(name) == alone.rolling_accuracy_curve(name)).all(), name


def _no_change_first_and_alone(
    spec: CsvSpec, names: list[str], *, batch_size: int, window: int, max_keys: int
) -> tuple[EvaluationResults, EvaluationResults, SideLane]:
    """The results of ``names`` with ``no_change`` in the first process and the others (and its
    scores) in a side lane, then in one process; and the side lane."""
    sizes = {"window": window, "max_keys": max_keys, "keep_trace": True}
    lane = SideLane(spec, names, batch_size=batch_size, elsewhere=["no_change"], **sizes)  # type: ignore[arg-type]
    try:
        evaluator = build_evaluator(["no_change"], scored_elsewhere=True, **sizes)  # type: ignore[arg-type]
        here = evaluate_stream(spec.events(), evaluator, batch_size=batch_size, side_lane=lane, order=names)
    finally:
        lane.close()
    alone = evaluate_stream(spec.events(), build_evaluator(names, **sizes), batch_size=batch_size)  # type: ignore[arg-type]
    return here.results, alone.results, lane


def _no_change_probabilities(spec: CsvSpec, batch_size: int) -> list[np.ndarray]:
    """No-change's probabilities of each batch's (all labelled) events, as the first process has them."""
    model = build_models(["no_change"])["no_change"]
    found = []
    for batch in batches(spec.events(), batch_size):
        found.append(model.predict_batch(batch))
        model.learn_batch(batch)
    return found


def _mixing_lane(spec: CsvSpec, baseline: str = "logreg") -> SideLane:
    """A side lane that runs ``baseline`` and mixes it with the first process's ``no_change``."""
    return SideLane(
        spec,
        [baseline, "no_change", MIXTURE],
        batch_size=32,
        window=100,
        max_keys=1000,
        keep_trace=False,
        elsewhere=["no_change"],
    )


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (lambda batches: batches[:20], r"sent too few probabilities: 12 batch\(es\) were not scored"),
        (
            lambda batches: [*batches, batches[0]],
            r"more probabilities than .* \(1,000\); more of no_change 32",
        ),
    ],
    ids=["too few", "too many"],
)
def test_probabilities_from_the_first_process_must_match_the_labelled_events(
    stream_csv: Path, sent: Callable[[list[np.ndarray]], list[np.ndarray]], error: str
) -> None:
    spec = CsvSpec(str(stream_csv), label="label", key="key", limit=1000)
    probabilities = _no_change_probabilities(spec, 32)  # 32 batches
    lane = _mixing_lane(spec)
    try:
        for batch in sent(probabilities):
            lane.send_probabilities({"no_change": batch})
        with pytest.raises(EvaluationError, match=error):
            lane.results()
    finally:
        lane.close()


def test_a_side_process_killed_while_it_mixes_is_an_error_not_a_hang(stream_csv: Path) -> None:
    """Sending to a process that is gone, or waiting for its scores, raises at once."""
    spec = CsvSpec(str(stream_csv), label="label", key="key")
    lane = _mixing_lane(spec)
    try:
        lane.wait_until_ready()
        lane.send_probabilities({"no_change": np.full(32, 0.5)})
        os.kill(lane.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while lane.running:
            assert time.monotonic() < deadline, "SIGKILL did not end the side process"
            time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(EvaluationError, match="exited with code -9 before sending its scores"):
            for _ in range(CHUNK_BATCHES):
                lane.send_probabilities({"no_change": np.full(32, 0.5)})
        with pytest.raises(EvaluationError, match="exited with code -9 before sending its scores"):
            lane.results()
        assert time.monotonic() - started < 10
    finally:
        lane.close()


def test_the_first_process_scores_nothing_of_the_side_lane(stream_csv: Path) -> None:
    """It would wait for the side lane's models forever: models of both are scored in the side
    lane."""
    evaluator = build_evaluator(["logreg", "no_change", MIXTURE], outside=["logreg"])
    with pytest.raises(ConfigError, match="scored in the side lane"):
        evaluate_stream(CsvSpec(str(stream_csv), label="label").events(), evaluator, batch_size=32)


@pytest.mark.parametrize(
    ("names", "elsewhere"),
    [
        (["logreg", MIXTURE], ["no_change"]),
        (["logreg", "no_change"], ["no_change", "no_change"]),
        (["logreg", "no_change", MIXTURE], [MIXTURE]),
    ],
)
def test_models_run_in_the_first_process_must_be_among_the_side_lanes_names(
    stream_csv: Path, names: list[str], elsewhere: list[str]
) -> None:
    """Not among its names, nothing there would take their probabilities (and the mixture runs
    only there)."""
    with pytest.raises(ValueError, match="must be distinct models of names"):
        SideLane(
            CsvSpec(str(stream_csv), label="label"),
            names,
            batch_size=32,
            window=100,
            max_keys=1000,
            keep_trace=False,
            elsewhere=elsewhere,
        )


#: A small LSTM, quick to run.
SMALL_LSTM = {"hidden_size": 4, "device": "cpu"}


def _partly_labelled_csv(path: Path, rows: int) -> Path:
    """Three keys, one feature, and no label on every fourth row."""
    lines = ["key,x,label"] + [f"k{i % 3},{i % 7},{'' if i % 4 == 0 else (i // 2) % 2}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "names",
    [["logreg", "lstm", "no_change"], ["logreg", "lstm", "no_change", MIXTURE]],
    ids=["alone", "mixed"],
)
def test_the_lstm_scored_in_the_side_lane_scores_as_in_one_process(tmp_path: Path, names: list[str]) -> None:
    """The first process only runs the LSTM and sends its probabilities; the second scores it (and
    mixes it): every score, rolling score and curve, and the order, are those of one process, with
    events without a label among them. The LSTM's seconds and guard counts are the first
    process's, and its progress line says that the scores come at the end."""
    spec = CsvSpec(str(_partly_labelled_csv(tmp_path / "partly.csv", 900)), label="label", key="key")
    settings = {"window": 50, "max_keys": 100, "keep_trace": True, "lstm": SMALL_LSTM}
    lane = SideLane(spec, names, batch_size=16, **settings, elsewhere=["lstm"])
    out = io.StringIO()
    try:
        first = build_evaluator(["lstm"], **settings, scored_elsewhere=True)
        progress = ProgressLine(None, stream=out, log_interval=0.0)
        evaluation = evaluate_stream(
            spec.events(), first, batch_size=16, progress=progress, side_lane=lane, order=names
        )
    finally:
        lane.close()
    here = evaluation.results
    alone = build_evaluator(names, **settings)
    evaluate_stream(spec.events(), alone, batch_size=16)
    assert first.results().scores == first.results().trace == {}
    assert 0 < here.labelled == alone.labelled < here.events == 900
    assert list(here.scores) == list(here.seconds) == list(here.report()) == names
    for name in names:
        assert here.scores[name].whole() == alone.scores[name].whole(), name
        assert here.scores[name].rolling() == alone.scores[name].rolling(), name
        assert (here.rolling_accuracy_curve(name) == alone.rolling_accuracy_curve(name)).all(), name
    assert here.seconds["lstm"] == first.seconds["lstm"] > 0
    assert here.report()["lstm"]["events_per_second"] == 900 / first.seconds["lstm"]
    assert here.guard_stats()["lstm"] == first.guard_stats()["lstm"]
    *meanwhile, last = out.getvalue().splitlines()
    assert meanwhile and all(line.endswith("scores at the end (second process)") for line in meanwhile)
    assert "rolling acc: logreg " in last and " lstm " in last


def test_a_model_is_scored_in_exactly_one_process(stream_csv: Path) -> None:
    """Scored in both would clash at the end, in neither would be missing from the report: both
    are refused before the run."""
    events = CsvSpec(str(stream_csv), label="label", key="key").events()

    class Lane:
        elsewhere = ("no_change",)

    with pytest.raises(ConfigError, match="no_change would be scored in both processes"):
        evaluate_stream(events, build_evaluator(["no_change"]), batch_size=32, side_lane=Lane())  # type: ignore[arg-type]
    unscored = build_evaluator(["logreg", "no_change"], scored_elsewhere=True)
    with pytest.raises(ConfigError, match="nothing would score logreg"):
        evaluate_stream(events, unscored, batch_size=32, side_lane=Lane())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="nothing would score logreg, no_change"):
        evaluate_stream(events, unscored, batch_size=32)


def test_probabilities_of_other_models_than_those_it_scores_are_an_error() -> None:
    """The second process takes only the probabilities of the models it was told it scores."""
    evaluator = build_evaluator(["logreg", "no_change"], outside=["no_change"])
    reader, writer = multiprocessing.Pipe(duplex=False)
    arrivals = _Arrivals(reader, ["no_change"], evaluator, os.getppid())
    writer.send({"lstm": np.full(4, 0.5)})
    with pytest.raises(EvaluationError, match="sent probabilities of lstm, not of no_change"):
        arrivals.take_arrived()
    writer.close()
    reader.close()
