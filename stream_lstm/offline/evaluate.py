"""The work of ``stream-lstm evaluate``: stream a CSV file through the models, test-then-train.

The models never read each other's predictions, so they can be evaluated apart on the same
events: :class:`SideLane` runs the baselines in a second process, which reads the file itself,
while this process runs the LSTM. Each process evaluates its models exactly as one process
would; the two sets of scores are then reported together.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from multiprocessing.connection import Connection
from typing import Any

from stream_lstm.errors import EvaluationError
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_models
from stream_lstm.learner.child_process import start_without_ctrl_c
from stream_lstm.messages.events import Event
from stream_lstm.offline.csv_source import BadRow, CsvEventSource
from stream_lstm.telemetry.progress import ProgressLine

log = logging.getLogger(__name__)


def batches(events: Iterable[Event], size: int) -> Iterable[list[Event]]:
    """Consecutive micro-batches of ``size`` events (the last one may be shorter)."""
    batch: list[Event] = []
    for event in events:
        batch.append(event)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class CsvSpec:
    """How to read a CSV file of events, enough for another process to read it again."""

    path: str
    label: str
    key: str | None = None
    ts: str | None = None
    limit: int | None = None

    def reader(self, on_bad_row: Callable[[BadRow], None] | None = None) -> CsvEventSource:
        """A new reader of the file (``on_bad_row`` as for :class:`CsvEventSource`)."""
        return CsvEventSource(self.path, label=self.label, key=self.key, ts=self.ts, on_bad_row=on_bad_row)

    def events(self, source: CsvEventSource | None = None) -> Iterable[Event]:
        """The file's events (the first ``limit`` of them), from ``source`` or a new reader."""
        if source is None:
            source = self.reader()
        return islice(source, self.limit) if self.limit else iter(source)


class SideLane:
    """Evaluates some models in a second process, on its own reading of the same CSV file.

    Reading the file again costs far less than passing events between processes, and the
    baselines (pure Python) then learn on a second CPU while this process runs the LSTM. The
    process ignores Ctrl-C (this one stops it) and reports a failure with its traceback.

    Parameters
    ----------
    spec
        The file and how to read it.
    names
        The models to run there.
    batch_size, window, max_keys, keep_trace
        As for the evaluation in this process.
    lstm
        The LSTM's keyword arguments, as given to :func:`build_models` in this process (the
        baselines take its ``max_features`` and ``input_clip``).
    """

    def __init__(
        self,
        spec: CsvSpec,
        names: Sequence[str],
        *,
        batch_size: int,
        window: int,
        max_keys: int,
        keep_trace: bool,
        lstm: Mapping[str, Any] | None = None,
    ) -> None:
        self.names = tuple(names)
        job = _SideJob(
            spec, self.names, batch_size, window, max_keys, keep_trace, os.getpid(), dict(lstm or {})
        )
        context = multiprocessing.get_context("spawn")  # no fork of a process running torch
        self._results, sender = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_run_side_lane, args=(sender, job), name="stream-lstm-baselines", daemon=True
        )
        start_without_ctrl_c(self._process)
        sender.close()
        self._answer: tuple[str, Any] | None = None

    @property
    def pid(self) -> int | None:
        """The process id of the second process."""
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the second process is still alive."""
        return self._process.is_alive()

    def check(self) -> None:
        """Raise :class:`EvaluationError` now if the process has already failed."""
        if self._answer is None and self._results.poll():
            self._answer = self._receive()
        if self._answer is not None and self._answer[0] == "error":
            raise EvaluationError(
                f"the process evaluating {', '.join(self.names)} failed:\n{self._answer[1]}"
            )

    def results(self) -> dict[str, Any]:
        """Wait for the process to finish; its evaluator's :meth:`PrequentialEvaluator.results`."""
        if self._answer is None:
            self._answer = self._receive()
        self.check()
        return self._answer[1]

    def close(self) -> None:
        """Stop the process if it still runs."""
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
        self._process.join(timeout=10)
        self._results.close()

    def _receive(self) -> tuple[str, Any]:
        try:
            return self._results.recv()
        except EOFError:
            self._process.join(timeout=10)
            return ("error", f"it exited with code {self._process.exitcode} before sending its scores")


@dataclass(frozen=True)
class _SideJob:
    """What the :class:`SideLane` process is to do, and who its parent is."""

    spec: CsvSpec
    names: tuple[str, ...]
    batch_size: int
    window: int
    max_keys: int
    keep_trace: bool
    parent: int
    lstm: dict[str, Any] | None = None


def _run_side_lane(results: Connection, job: _SideJob) -> None:
    """The body of the :class:`SideLane` process; it gives up if its parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        evaluator = PrequentialEvaluator(
            build_models(job.names, max_keys=job.max_keys, lstm=job.lstm),
            window=job.window,
            max_keys=job.max_keys,
            keep_trace=job.keep_trace,
        )
        for count, batch in enumerate(batches(job.spec.events(), job.batch_size)):
            if count % 256 == 0 and os.getppid() != job.parent:
                return
            evaluator.process(batch)
        answer: tuple[str, Any] = ("ok", evaluator.results())
    except BaseException as error:  # whatever it is, the parent reports it
        answer = ("error", "".join(traceback.format_exception(error)).rstrip())
    try:
        results.send(answer)
    except OSError:
        pass  # the parent is gone: nobody to tell
    finally:
        results.close()


def evaluate_stream(
    events: Iterable[Event],
    evaluator: PrequentialEvaluator,
    *,
    batch_size: int,
    progress: ProgressLine | None = None,
    side_lane: SideLane | None = None,
    order: Sequence[str] = (),
) -> float:
    """Run every event through ``evaluator`` in micro-batches; return the seconds it took.

    With a ``side_lane`` (started on the same events), its models' results are added to
    ``evaluator`` at the end, in ``order``, and the time includes waiting for them.
    """
    started = time.perf_counter()
    for count, batch in enumerate(batches(events, batch_size)):
        evaluator.process(batch)
        if progress is not None:
            progress.update(evaluator.events, lambda: _status(evaluator, side_lane))
        if side_lane is not None and count % 256 == 0:
            side_lane.check()
    if side_lane is not None:
        evaluator.add_results(side_lane.results(), order)
    seconds = time.perf_counter() - started
    if progress is not None:
        progress.update(evaluator.events, lambda: _status(evaluator, None), force=True)
        progress.close()
    warn_about_guards(evaluator)
    return seconds


def warn_about_guards(evaluator: PrequentialEvaluator) -> None:
    """Log a warning for each model that skipped updates (a non-finite loss or gradient), with
    the counts by reason; dropped feature values (names past ``max_features``) are logged as info."""
    for name, stats in evaluator.guard_stats().items():
        skipped = {
            reason.removeprefix("skipped_"): count
            for reason, count in stats.items()
            if reason.startswith("skipped_") and count
        }
        if skipped:
            counts = ", ".join(f"{reason}: {count:,}" for reason, count in skipped.items())
            log.warning(
                "%s skipped %s update(s) whose loss or gradient was not finite (%s)",
                name,
                f"{sum(skipped.values()):,}",
                counts,
            )
        dropped = stats.get("features_dropped", 0)
        if dropped:
            log.info("%s dropped %s value(s) of features past max_features", name, f"{dropped:,}")


def _status(evaluator: PrequentialEvaluator, side_lane: SideLane | None) -> str:
    parts = []
    for name, scorer in evaluator.scores.items():
        accuracy = scorer.rolling()["accuracy"]
        parts.append(f"{name} {accuracy:.3f}" if accuracy == accuracy else f"{name} n/a")
    if side_lane is not None:  # their scores arrive at the end
        parts.append(f"({', '.join(side_lane.names)}: in a second process)")
    return "rolling acc: " + "  ".join(parts)


def evaluation_report(
    source: CsvEventSource,
    evaluator: PrequentialEvaluator,
    *,
    seconds: float,
    batch_size: int,
    learner: dict[str, Any] | None,
    processes: int = 1,
) -> dict[str, Any]:
    """The JSON report of an evaluation run (``processes``: 2 when a :class:`SideLane` ran)."""
    events = evaluator.events
    return {
        "file": str(source.path),
        "events": events,
        "labelled": evaluator.labelled,
        "skipped": source.skipped,
        "bad_rows": [asdict(bad) for bad in source.bad_rows[:100]],
        "seconds": seconds,
        "events_per_second": events / seconds if seconds > 0 else None,
        "batch_size": batch_size,
        "processes": processes,
        "window": evaluator.window,
        "models": evaluator.report(),
        "guards": evaluator.guard_stats(),
        "lstm": learner,
    }
