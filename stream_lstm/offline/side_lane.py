"""The side lane of ``stream-lstm evaluate``: some models evaluated in a second process.

The models never read each other's predictions, so they can be evaluated apart on the same
events: :class:`SideLane` runs the baselines in a second process, which reads the file itself,
while the first process runs the LSTM. Each process evaluates its models exactly as one process
would; the two results are then reported together
(:func:`~stream_lstm.evaluation.results.combine_results`).

The second process is started early, so that its start-up (the interpreter, the imports, building
its models) overlaps the first's; it then waits for :meth:`SideLane.begin`, which the first process
calls as it starts its clock and reads its first event (after :meth:`SideLane.wait_until_ready`).
The time of the run is then both processes' evaluation, without either's start-up.

The mixture (``mix``) does read the other models' predictions: when the first process mixes, the
second sends its models' probabilities of the labelled events as it goes, in chunks of
:data:`CHUNK_BATCHES` batches, and the first process mixes them with its own
(:meth:`~stream_lstm.evaluation.prequential.PrequentialEvaluator.mix_late`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from stream_lstm.errors import EvaluationError
from stream_lstm.evaluation.prequential import PrequentialEvaluator
from stream_lstm.evaluation.results import EvaluationResults
from stream_lstm.learner.child_process import start_without_ctrl_c
from stream_lstm.models.build import build_models
from stream_lstm.offline.batches import batches
from stream_lstm.offline.csv_source import CsvSpec

#: Micro-batches whose probabilities the second process sends at once (about 24 kB for three
#: models at batch size 64, less than a pipe holds, so sending rarely waits for the reader).
CHUNK_BATCHES = 16


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
    send_probabilities
        Send the models' probabilities of the labelled events as they are predicted (for the
        mixture in this process): :meth:`check` collects them, :meth:`take_probabilities` hands
        them over.

    The process reads no event before :meth:`begin` (which :meth:`check` and :meth:`results`
    call too).
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
        send_probabilities: bool = False,
    ) -> None:
        self.names = tuple(names)
        job = _SideJob(
            spec,
            self.names,
            batch_size,
            window,
            max_keys,
            keep_trace,
            os.getpid(),
            dict(lstm or {}),
            send_probabilities,
        )
        context = multiprocessing.get_context("spawn")  # no fork of a process running torch
        self._results, sender = context.Pipe(duplex=False)
        go_reader, self._go = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_run_side_lane, args=(sender, go_reader, job), name="stream-lstm-baselines", daemon=True
        )
        start_without_ctrl_c(self._process)
        sender.close()
        go_reader.close()
        self._begun = False
        self._ready = False
        self._answer: tuple[str, Any] | None = None
        self._probabilities: list[dict[str, np.ndarray]] = []

    @property
    def pid(self) -> int | None:
        """The process id of the second process."""
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the second process is still alive."""
        return self._process.is_alive()

    @property
    def exitcode(self) -> int | None:
        """The second process's exit code (``-N``: ended by signal ``N``); ``None`` while it runs."""
        return self._process.exitcode

    def ready(self) -> bool:
        """Whether the process has built its models and waits for :meth:`begin` (or has failed:
        :meth:`check` says)."""
        while not self._ready and self._answer is None and self._results.poll():
            self._take(self._receive())
        return self._ready or self._answer is not None

    def wait_until_ready(self) -> None:
        """Wait until the process has built its models; raise :class:`EvaluationError` if it
        failed first."""
        while not self._ready and self._answer is None:
            self._take(self._receive())
        if self._answer is not None:
            self.check()

    def begin(self) -> None:
        """Let the process start reading events (once it has built its models)."""
        if not self._begun:
            self._begun = True
            with contextlib.suppress(OSError):  # it has already ended: check and results say how
                self._go.send(True)
            self._go.close()

    def check(self) -> None:
        """Collect what the process has sent so far; raise :class:`EvaluationError` now if it has
        already failed."""
        self.begin()
        while self._answer is None and self._results.poll():
            self._take(self._receive())
        if self._answer is not None and self._answer[0] == "error":
            raise EvaluationError(
                f"the process evaluating {', '.join(self.names)} failed:\n{self._answer[1]}"
            )

    def results(self) -> EvaluationResults:
        """Wait for the process to finish; its evaluator's :meth:`PrequentialEvaluator.results`."""
        self.begin()
        while self._answer is None:
            self._take(self._receive())
        self.check()
        return self._answer[1]

    def take_probabilities(self) -> list[dict[str, np.ndarray]]:
        """The chunks of probabilities collected since the last call, in order (each: by model,
        the probabilities of the next labelled events)."""
        chunks, self._probabilities = self._probabilities, []
        return chunks

    def _take(self, message: tuple[str, Any]) -> None:
        if message[0] == "probabilities":
            self._probabilities.append(message[1])
        elif message[0] == "ready":
            self._ready = True
        else:
            self._answer = message

    def close(self) -> None:
        """Stop the process if it still runs."""
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
        self._process.join(timeout=10)
        self._results.close()
        self._go.close()

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
    send_probabilities: bool = False


def _run_side_lane(results: Connection, go: Connection, job: _SideJob) -> None:
    """The body of the :class:`SideLane` process; it gives up if its parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        evaluator = PrequentialEvaluator(
            build_models(job.names, max_keys=job.max_keys, lstm=job.lstm),
            window=job.window,
            max_keys=job.max_keys,
            keep_trace=job.keep_trace,
        )
        results.send(("ready", None))
        if not _wait_for_go(go, job.parent):
            return
        chunk: dict[str, list[np.ndarray]] = {name: [] for name in job.names}
        for count, batch in enumerate(batches(job.spec.events(), job.batch_size)):
            if count % 256 == 0 and os.getppid() != job.parent:
                return
            predictions = evaluator.process(batch)
            if job.send_probabilities:
                labelled = np.array([event.label is not None for event in batch], dtype=bool)
                for name in job.names:
                    chunk[name].append(predictions[name][labelled])
                if count % CHUNK_BATCHES == CHUNK_BATCHES - 1:
                    _send_chunk(results, chunk)
        if job.send_probabilities:
            _send_chunk(results, chunk)
        answer: tuple[str, Any] = ("ok", evaluator.results())
    except BaseException as error:  # whatever it is, the parent reports it
        answer = ("error", "".join(traceback.format_exception(error)).rstrip())
    try:
        results.send(answer)
    except OSError:
        pass  # the parent is gone: nobody to tell
    finally:
        results.close()


def _wait_for_go(go: Connection, parent: int) -> bool:
    """Wait for :meth:`SideLane.begin`; ``False`` when the parent is gone or has closed the lane."""
    while not go.poll(1.0):
        if os.getppid() != parent:
            return False
    try:
        return bool(go.recv())
    except EOFError:
        return False
    finally:
        go.close()


def _send_chunk(results: Connection, chunk: dict[str, list[np.ndarray]]) -> None:
    """Send the probabilities gathered in ``chunk`` (if any) and empty it."""
    if any(chunk.values()):
        results.send(("probabilities", {name: np.concatenate(parts) for name, parts in chunk.items()}))
    for parts in chunk.values():
        parts.clear()
