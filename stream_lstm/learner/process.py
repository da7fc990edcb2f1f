"""The LSTM learner in a process of its own, behind the learner's interface.

With kafka-python the service's process is bound by its interpreter lock: the Kafka client, the
decoding and the baselines are Python, and so is a good part of every LSTM step. In a child
process the learner uses another CPU, and it can predict and learn one micro-batch while the
service produces the previous one and polls the next.

The order of work is kept exactly: the child takes requests one at a time, in the order they are
sent, and learns every batch right after answering its predictions. The learner sees
predict(batch 1), learn(batch 1), predict(batch 2), ... as it would in the service's own
process, so the predictions are the same (same weights, same key states); only the waiting
changes. :meth:`LearnerProcess.start_predict` returns at once and may run one batch ahead of
:meth:`LearnerProcess.finish_predict`; :meth:`LearnerProcess.learn_batch` of a predicted batch
costs nothing.

A checkpoint of an evaluator holding a :class:`LearnerProcess` holds a plain
:class:`~stream_lstm.learner.lstm_learner.LSTMLearner`: :meth:`LearnerProcess.to_state` asks the
child for its learner's data form. The pipe itself carries pickles (of events, answers and the
learner's data form), between this process and the child it started: no checkpoint is ever
unpickled. This module imports no torch; the child does.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import pickle
import signal
import time
import traceback
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from stream_lstm.errors import StreamLSTMError
from stream_lstm.learner.child_process import start_without_ctrl_c
from stream_lstm.messages.events import Event
from stream_lstm.models.build import model_from_state
from stream_lstm.models.protocols import PredictsApart, TrainedModel

#: Seconds to wait for the child to start (it imports torch) and answer its first request.
START_TIMEOUT_S = 120.0
#: Seconds to wait for any later answer before taking the child for hung.
ANSWER_TIMEOUT_S = 600.0
#: Batches whose predictions may be asked for before the first of them is collected.
MAX_IN_FLIGHT = 2


class LearnerProcessError(StreamLSTMError):
    """The learner's process failed or exited; what it learned since the last checkpoint is lost."""


@dataclass
class _InFlight:
    """A batch sent for prediction, and the child's answer once it is read."""

    events: Sequence[Event]
    answer: tuple[np.ndarray, float, int] | None = None
    collected: bool = False


class LearnerProcess(TrainedModel, PredictsApart):
    """An :class:`~stream_lstm.learner.LSTMLearner` run in a child process.

    Offers what the evaluator and the service use of the learner: ``predict_batch`` and
    ``learn_batch`` (every predicted batch must then be learned, in order, as in prequential
    evaluation), the per-key state calls, ``training_stats``, ``key_stats``, ``guard_stats``,
    ``non_finite_parts``, ``steps`` and pickling. A failure in the child, or its death, raises
    :class:`LearnerProcessError` on the next call that waits for it, and on every call after.

    Parameters
    ----------
    learner
        The learner to run; it is copied to the child (the caller should drop its own).
    torch_threads
        CPU threads torch may use in the child.
    answer_timeout_s
        How long to wait for an answer before giving the child up as hung (the error is final,
        like the child's death).
    """

    #: The evaluator calls :meth:`start_predict` before running the other models.

    def __init__(
        self, learner: Any, *, torch_threads: int = 1, answer_timeout_s: float = ANSWER_TIMEOUT_S
    ) -> None:
        self.answer_timeout_s = answer_timeout_s
        context = multiprocessing.get_context("spawn")  # never fork a process running torch
        self._connection, child_end = context.Pipe(duplex=True)
        self._process = context.Process(
            target=_serve, args=(child_end, torch_threads), name="stream-lstm-learner", daemon=True
        )
        start_without_ctrl_c(self._process)
        child_end.close()
        self._failure: str | None = None
        self._in_flight: deque[_InFlight] = deque()
        #: Optimizer steps taken before the batch last collected was predicted.
        self.steps = 0
        self._hyperparameters: dict[str, Any] = {}
        self.torch_device = "cpu"
        try:
            self.load(learner, timeout_s=START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def in_flight(self) -> int:
        """Batches sent for prediction and not learned yet."""
        return len(self._in_flight)

    # ------------------------------------------------------------------ life cycle

    def load(self, learner: Any, *, timeout_s: float | None = None) -> None:
        """Replace the child's learner by ``learner`` (a rollback), dropping the batches in flight."""
        if learner is self:
            return
        self.drop_in_flight()
        info = self._call(
            "load", pickle.dumps(learner, protocol=pickle.HIGHEST_PROTOCOL), timeout_s=timeout_s
        )
        self._hyperparameters, self.torch_device, self.steps = info

    def drop_in_flight(self) -> None:
        """Forget the batches in flight, which the child may have learned already.

        Only for a caller about to :meth:`load` a checkpoint (a rollback): until then the
        child is ahead of what its caller published.
        """
        self._read_answers()
        self._in_flight.clear()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the child (what it learned since the last checkpoint is gone)."""
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                _send(self._connection, ("close", None))
            deadline = time.monotonic() + timeout_s
            while self._process.is_alive() and time.monotonic() < deadline:
                # Read what it still sends: a large answer must not keep it from reading "close".
                with contextlib.suppress(EOFError, OSError):
                    if self._connection.poll(0.05):
                        self._connection.recv_bytes()
            if self._process.is_alive():
                self._process.kill()
            self._process.join(timeout_s)
        self._connection.close()

    # ------------------------------------------------------------------ predict and learn

    def start_predict(self, events: Sequence[Event]) -> None:
        """Send ``events`` for prediction (then learning); :meth:`finish_predict` collects the answer."""
        self._check()
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            raise RuntimeError(f"at most {MAX_IN_FLIGHT} batches may be in flight")
        # At most one answer waits in the pipe: reading it first means neither side can block
        # the other on a full pipe.
        self._read_answers()
        self._send("predict", list(events))
        self._in_flight.append(_InFlight(events))

    def predicting(self, events: Sequence[Event]) -> bool:
        """Whether ``events`` was sent by :meth:`start_predict` and not collected yet."""
        return any(batch.events is events and not batch.collected for batch in self._in_flight)

    def finish_predict(self, events: Sequence[Event]) -> tuple[np.ndarray, float]:
        """The probabilities of ``events``, and the child's seconds on them (and on learning).

        ``events`` must be the oldest batch sent and not collected yet.
        """
        batch = next((batch for batch in self._in_flight if not batch.collected), None)
        if batch is None:
            raise RuntimeError("finish_predict without start_predict")
        if batch.events is not events:
            raise RuntimeError("finish_predict must collect the batches in the order they were sent")
        if batch.answer is None:
            batch.answer = self._receive()
        probabilities, seconds, self.steps = batch.answer
        batch.collected = True
        return probabilities, seconds

    def predict_batch(self, events: Sequence[Event]) -> np.ndarray:
        """Probability that each event's label is 1 (see ``LSTMLearner.predict_batch``)."""
        if not self.predicting(events):
            self.start_predict(events)
        return self.finish_predict(events)[0]

    def learn_batch(self, events: Sequence[Event]) -> None:
        """Learn ``events``: free for the oldest batch predicted (the child learned it already)."""
        self._check()
        if self._in_flight:
            oldest = self._in_flight[0]
            if oldest.events is not events or not oldest.collected:
                raise RuntimeError("learn_batch must take the oldest batch predicted, after its predictions")
            self._in_flight.popleft()
            return
        self._send("learn", list(events))  # a batch that was never predicted

    # ------------------------------------------------------------------ per-key state and stats

    def tracked_keys(self) -> Collection[str]:
        return self._call("tracked_keys", settled=True)

    def export_keys(self, keys: Sequence[str]) -> dict[str, Any]:
        return self._call("export_keys", list(keys), settled=True)

    def import_keys(self, state: dict[str, Any]) -> None:
        self._call("import_keys", state, settled=True)

    def forget_keys(self, keys: Sequence[str]) -> None:
        self._call("forget_keys", list(keys), settled=True)

    def detach_keys(self) -> int:
        """Set every key's state aside in the child; the token is for :meth:`attach_keys`."""
        return self._call("detach_keys", settled=True)

    def attach_keys(self, token: int) -> None:
        self._call("attach_keys", token)

    def training_stats(self) -> dict[str, float]:
        return self._call("training_stats")

    def key_stats(self) -> dict[str, int]:
        return self._call("key_stats")

    def guard_stats(self) -> dict[str, int]:
        """The learner's ``guard_stats``: skipped steps by reason, and dropped feature values."""
        return self._call("guard_stats")

    def non_finite_parts(self) -> list[str]:
        """The learner's ``non_finite_parts``, checked in the child (what a checkpoint would hold)."""
        return self._call("non_finite_parts", settled=True)

    def device_memory_bytes(self) -> int:
        return self._call("device_memory_bytes")

    def hyperparameters(self) -> dict[str, Any]:
        return dict(self._hyperparameters)

    def change_settings(self, changes: dict[str, Any]) -> None:
        """The learner's ``change_settings``, in the child."""
        self._hyperparameters, self.torch_device = self._call("change_settings", changes, settled=True)

    def to_state(self) -> dict[str, Any]:
        """The child's learner as data (``LSTMLearner.to_state``): a checkpoint does not depend
        on how the learner was run."""
        return self._call("state", settled=True)

    def __reduce__(self) -> tuple[Any, tuple[Any, str]]:
        # Copied as the learner itself, built from its data form.
        return model_from_state, (self.to_state(), "learner")

    # ------------------------------------------------------------------ the pipe

    def _call(
        self, operation: str, argument: Any = None, *, settled: bool = False, timeout_s: float | None = None
    ) -> Any:
        """Ask the child and wait for its answer.

        ``settled``: the request reads or changes what the learned batches left, so no batch
        may be in flight (the child would be ahead of its caller).
        """
        self._check()
        if settled and self._in_flight:
            raise RuntimeError(f"{operation} while {len(self._in_flight)} batch(es) are in flight")
        self._read_answers()
        self._send(operation, argument)
        return self._receive(timeout_s)

    def _read_answers(self) -> None:
        """Read the answers to predictions the pipe still holds, keeping them for their batches."""
        for batch in self._in_flight:
            if batch.answer is None:
                batch.answer = self._receive()

    def _send(self, operation: str, argument: Any) -> None:
        try:
            _send(self._connection, (operation, argument))
        except OSError as error:
            self._fail(f"cannot reach the learner process: {error}")

    def _receive(self, timeout_s: float | None = None) -> Any:
        timeout_s = self.answer_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            while not self._connection.poll(1.0):
                if not self._process.is_alive():
                    raise EOFError
                if time.monotonic() > deadline:
                    self._fail(f"the learner process did not answer within {timeout_s:.0f} s")
            status, value = _receive(self._connection)
        except (EOFError, OSError):
            self._process.join(1.0)
            self._fail(f"the learner process exited (exit code {self._process.exitcode})")
        if status == "error":
            self._fail(f"the learner failed:\n{value}")
        return value

    def _check(self) -> None:
        if self._failure is not None:
            raise LearnerProcessError(self._failure)

    def _fail(self, reason: str) -> None:
        self._failure = reason
        raise LearnerProcessError(reason)


def _send(connection: Connection, message: Any) -> None:
    # Plain pickle, not the connection's own: once torch is imported, that one would pass tensors
    # (key states) through shared memory, which a container may have little of.
    connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _receive(connection: Connection) -> Any:
    return pickle.loads(connection.recv_bytes())


def _serve(connection: Connection, torch_threads: int) -> None:
    """The child: run requests in order until told to close or the parent is gone."""
    # Ctrl-C, or a stop sent to the whole process group, is the parent's to handle: it closes
    # this process once its last checkpoint is written (the child also ends when the parent does).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from stream_lstm.learner.cpu_threads import set_cpu_threads

    set_cpu_threads(torch_threads)
    server = _LearnerServer()
    while True:
        try:
            operation, argument = _receive(connection)
        except (EOFError, OSError):
            return  # the parent is gone
        if operation == "close":
            return
        answer = server.run(operation, argument)
        if operation != "learn":  # learning is not waited for: a failure shows in the next answer
            _send(connection, ("error", server.failure) if server.failure is not None else ("ok", answer))
        if operation == "predict":
            server.run("learn", None)  # learn the batch while the parent publishes its predictions


#: Requests answered by the learner's method of the same name, without arguments.
_READ_OPERATIONS = ("training_stats", "key_stats", "guard_stats", "device_memory_bytes", "non_finite_parts")


class _LearnerServer:
    """The child's side: the learner, and what it holds between requests."""

    def __init__(self) -> None:
        self.learner: Any = None
        #: Once a request failed, the learner may be half-updated: every later request fails.
        self.failure: str | None = None
        self.predicted: list[Event] | None = None
        self.learn_seconds = 0.0
        self.set_aside: dict[int, Any] = {}
        self.tokens = itertools.count(1)

    def run(self, operation: str, argument: Any) -> Any:
        if self.failure is not None:
            return None
        try:
            return self._handle(operation, argument)
        except BaseException:
            self.failure = traceback.format_exc()
            return None

    def _handle(self, operation: str, argument: Any) -> Any:
        learner = self.learner
        if operation == "load":
            self.learner = pickle.loads(argument)
            self.predicted = None
            self.set_aside.clear()
            return self.learner.hyperparameters(), str(self.learner.torch_device), self.learner.steps
        if operation == "predict":
            started = time.perf_counter()
            probabilities = learner.predict_batch(argument)
            self.predicted = argument
            # The seconds reported with a batch: its prediction and the previous batch's learning.
            seconds = self.learn_seconds + time.perf_counter() - started
            self.learn_seconds = 0.0
            return probabilities, seconds, learner.steps
        if operation == "learn":
            started = time.perf_counter()
            learner.learn_batch(self.predicted if argument is None else argument)
            self.predicted = None
            self.learn_seconds += time.perf_counter() - started
            return None
        if operation == "state":
            return learner.to_state()
        if operation == "tracked_keys":
            return set(learner.tracked_keys())
        if operation == "detach_keys":
            token = next(self.tokens)
            self.set_aside[token] = learner.detach_keys()
            return token
        if operation == "attach_keys":
            learner.attach_keys(self.set_aside.pop(argument))
            return None
        if operation == "change_settings":
            learner.change_settings(argument)
            return learner.hyperparameters(), str(learner.torch_device)
        if operation in ("export_keys", "import_keys", "forget_keys"):
            return getattr(learner, operation)(argument)
        if operation in _READ_OPERATIONS:
            return getattr(learner, operation)()
        raise ValueError(f"unknown request {operation!r}")
