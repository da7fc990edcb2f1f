"""The side lane of ``stream-lstm evaluate``: some models evaluated in a second process.

The models never read each other's predictions, so they can be evaluated apart on the same
events: :class:`SideLane` runs the baselines in a second process, which reads the file itself,
while the first process runs the LSTM. The two results are then reported together
(:func:`~stream_lstm.evaluation.results.combine_results`).

The second process is started early, so that its start-up (the interpreter, the imports, building
its models) overlaps the first's; it then waits for :meth:`SideLane.begin`, which the first process
calls as it starts its clock and reads its first event (after :meth:`SideLane.wait_until_ready`).
The time of the run is then both processes' evaluation, without either's start-up.

The second process, not the slower one, also scores the first's models (the LSTM) and runs the
mixture (``mix``), which reads every model's predictions: the first process only predicts and
learns, and sends the probabilities of the labelled events of its models as it goes, in chunks of
:data:`CHUNK_BATCHES` batches (:meth:`SideLane.send_probabilities`). The second scores each batch
of them, and mixes it with its own models' when it runs the mixture, once they have arrived
(:meth:`~stream_lstm.evaluation.prequential.PrequentialEvaluator.take_outside`): every score, and
the mixture's weights, are those of one process.
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
from typing import Any, NoReturn

import numpy as np

from stream_lstm.errors import EvaluationError
from stream_lstm.evaluation.mixture import MIXTURE
from stream_lstm.evaluation.prequential import PrequentialEvaluator, build_evaluator
from stream_lstm.evaluation.results import EvaluationResults
from stream_lstm.learner.child_process import start_without_ctrl_c
from stream_lstm.offline.batches import batches
from stream_lstm.offline.csv_source import CsvSpec

#: Micro-batches whose probabilities the first process sends at once (about 8 kB for the LSTM at
#: batch size 64, an eighth of what a pipe holds, so sending rarely waits for the reader).
CHUNK_BATCHES = 16

#: What two processes that do not see the same labelled events suggest.
_CHANGED = "did the file change while it was read? --parallel false reads it once"


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
        The models to score there, in the order of ``--models`` (the mixture,
        :data:`~stream_lstm.evaluation.mixture.MIXTURE`, mixes its experts in this order): those
        it runs, and those of ``elsewhere`` in their place.
    batch_size, window, max_keys, keep_trace
        As for the evaluation in this process.
    lstm
        The LSTM's keyword arguments, as given to :func:`build_models` in this process (the
        baselines take its ``max_features`` and ``input_clip``).
    elsewhere
        Models that this process runs and the second scores (and mixes, when ``names`` holds the
        mixture): :meth:`send_probabilities` passes their probabilities of each batch on to it.
        This process's evaluator then scores nothing (``scored_elsewhere``).

    The process reads no event before :meth:`begin` (which :meth:`check`,
    :meth:`send_probabilities` and :meth:`results` call too).
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
        elsewhere: Sequence[str] = (),
    ) -> None:
        if MIXTURE in elsewhere or len(set(elsewhere)) != len(elsewhere) or not set(elsewhere) <= set(names):
            raise ValueError(
                f"the models run in this process ({', '.join(elsewhere)}) must be distinct models of names"
            )
        #: The models that this process runs and the second scores (whose probabilities it sends).
        self.elsewhere = tuple(elsewhere)
        #: What the second process runs: its models and, when it mixes, the mixture.
        self.names = tuple(name for name in names if name not in self.elsewhere)
        job = _SideJob(
            spec,
            tuple(names),
            batch_size,
            window,
            max_keys,
            keep_trace,
            os.getpid(),
            dict(lstm or {}),
            self.elsewhere,
        )
        context = multiprocessing.get_context("spawn")  # no fork of a process running torch
        self._results, sender = context.Pipe(duplex=False)
        go_reader, self._go = context.Pipe(duplex=False)
        late_reader, self._late = context.Pipe(duplex=False) if self.elsewhere else (None, None)
        self._process = context.Process(
            target=_run_side_lane,
            args=(sender, go_reader, late_reader, job),
            name="stream-lstm-baselines",
            daemon=True,
        )
        start_without_ctrl_c(self._process)
        for child_end in (sender, go_reader, late_reader):
            if child_end is not None:
                child_end.close()
        self._begun = False
        self._ready = False
        self._answer: tuple[str, Any] | None = None
        self._outgoing: dict[str, list[np.ndarray]] = {name: [] for name in self.elsewhere}
        self._buffered = 0

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

    def send_probabilities(self, probabilities: Mapping[str, np.ndarray]) -> None:
        """Pass on one batch's probabilities of its labelled events, by model (each of
        :attr:`elsewhere`), for the second process to score (and mix).

        They are copied (a model may reuse its arrays) and sent every :data:`CHUNK_BATCHES`
        batches. Raises :class:`EvaluationError` when the process has ended (with its error if it
        failed).
        """
        if self._late is None:
            raise ValueError("the second process scores no model of this one: it takes no probabilities")
        for name, parts in self._outgoing.items():
            parts.append(np.array(probabilities[name]))
        self._buffered += 1
        if self._buffered == CHUNK_BATCHES:
            self._send_chunk()

    def results(self) -> EvaluationResults:
        """Send the probabilities not sent yet and say that no more will come; wait for the process
        to finish; its evaluator's :meth:`PrequentialEvaluator.results`."""
        self.begin()
        if self._late is not None and not self._late.closed:
            self._send_chunk()
            self._late.close()
        self._wait_for_answer()
        self.check()
        assert self._answer is not None
        return self._answer[1]

    def _send_chunk(self) -> None:
        """Send the probabilities of the batches gathered since the last chunk, if any."""
        assert self._late is not None
        if not self._buffered:
            return
        chunk = {name: np.concatenate(parts) for name, parts in self._outgoing.items()}
        for parts in self._outgoing.values():
            parts.clear()
        self._buffered = 0
        self.begin()  # it takes them only once it evaluates
        try:
            self._late.send(chunk)
        except OSError:  # BrokenPipeError among others: the process has closed its end
            self._ended()

    def _ended(self) -> NoReturn:
        """Raise why the process stopped taking probabilities: its error, or that it ended."""
        self._wait_for_answer()  # it closes its end only as it ends, so this is short
        self.check()
        raise EvaluationError(
            f"the process evaluating {', '.join(self.names)} ended before it took the probabilities "
            f"of {', '.join(self.elsewhere)}"
        )

    def _wait_for_answer(self) -> None:
        while self._answer is None:
            self._take(self._receive())

    def _take(self, message: tuple[str, Any]) -> None:
        if message[0] == "ready":
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
        if self._late is not None:
            self._late.close()

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
    elsewhere: tuple[str, ...] = ()


def _run_side_lane(results: Connection, go: Connection, late: Connection | None, job: _SideJob) -> None:
    """The body of the :class:`SideLane` process; it gives up if its parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        evaluator = build_evaluator(
            job.names,
            window=job.window,
            max_keys=job.max_keys,
            keep_trace=job.keep_trace,
            lstm=job.lstm,
            outside=job.elsewhere,
        )
        arrivals = None if late is None else _Arrivals(late, job.elsewhere, evaluator, job.parent)
        results.send(("ready", None))
        if not _wait_for_go(go, job.parent):
            return
        for count, batch in enumerate(batches(job.spec.events(), job.batch_size)):
            if count % 256 == 0 and os.getppid() != job.parent:
                return
            evaluator.process(batch)
            if arrivals is not None:
                arrivals.take_arrived()
        if arrivals is not None and not arrivals.take_the_rest():
            return
        answer: tuple[str, Any] = ("ok", evaluator.results())
    except BaseException as error:  # whatever it is, the parent reports it
        answer = ("error", "".join(traceback.format_exception(error)).rstrip())
    if late is not None:
        late.close()  # a parent that still sends learns at once that this process has ended
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


class _Arrivals:
    """In the second process, the probabilities that the first sends (:meth:`SideLane.send_probabilities`),
    handed to the evaluator as they arrive; the first process closes its end after the last."""

    def __init__(
        self, late: Connection, experts: Sequence[str], evaluator: PrequentialEvaluator, parent: int
    ) -> None:
        self._late = late
        self._evaluator = evaluator
        self._parent = parent
        #: Probabilities received so far, by expert.
        self._received = dict.fromkeys(experts, 0)
        self._closed = False

    def take_arrived(self) -> None:
        """Score (and mix) what has arrived, without waiting (after each batch: the sender waits
        only while the pipe is full)."""
        while not self._closed and self._late.poll():
            self._take()

    def take_the_rest(self) -> bool:
        """After the last batch: score (and mix) what comes until the first process says it sent
        everything, and check that its probabilities were exactly those of this process's labelled
        events. ``False`` when the parent is gone."""
        while not self._closed:
            if self._late.poll(1.0):
                self._take()
            elif os.getppid() != self._parent:
                return False
        waiting = self._evaluator.waiting_batches()
        if waiting:
            raise EvaluationError(
                f"the first process sent too few probabilities: {waiting:,} batch(es) were not scored"
                f" ({_CHANGED})"
            )
        labelled = self._evaluator.labelled
        extra = {name: count - labelled for name, count in self._received.items() if count != labelled}
        if extra:
            counts = ", ".join(f"{name} {count:,}" for name, count in extra.items())
            raise EvaluationError(
                "the first process sent more probabilities than this process has labelled events "
                f"({labelled:,}); more of {counts} ({_CHANGED})"
            )
        return True

    def _take(self) -> None:
        """Receive one chunk and score (and mix) every batch it completes; note the end of the
        sending."""
        try:
            chunk = self._late.recv()
        except EOFError:
            self._closed = True
            return
        if set(chunk) != set(self._received):
            raise EvaluationError(
                f"the first process sent probabilities of {', '.join(chunk)}, not of "
                f"{', '.join(self._received)}"
            )
        for name, probabilities in chunk.items():
            self._received[name] += len(probabilities)
        self._evaluator.take_outside(chunk)
