"""Naming what keeps the service from Kafka, within seconds, instead of retrying in silence.

Both client libraries retry a misconfigured connection forever and say little (kafka-python:
"Unable to bootstrap"; librdkafka: a transport error now and then). :class:`ConnectionWatch` runs
the library-neutral diagnosis of :mod:`stream_lstm.kafka.connection_check` (TCP, TLS, the Kafka
protocol, SASL) when the service cannot connect: at start, before the checkpoint store is opened
(:meth:`ConnectionWatch.wait_until_ok`), and, rate-limited and on a thread of its own so that the
loop never waits for it (:meth:`ConnectionWatch.check_soon`), whenever the loop finds itself
disconnected. The cause goes to ``/healthz`` and to the log: "cannot reach Kafka at HOST:PORT:
REASON [code]" when the service starts and each time the cause changes (again after
:data:`REPEAT_LOG_S` while it lasts, never once per retry), and a line when it is reachable again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from stream_lstm.kafka.connection_check import ConnectionProblem, diagnose_connection
from stream_lstm.kafka.security import KafkaSecurity

log = logging.getLogger(__name__)

#: Problems that may pass without a change of settings (the cluster is starting, the network is
#: away): logged as warnings; the others are misconfigurations, logged as errors.
PASSING_CODES = frozenset({"dns", "unreachable", "timeout", "unexpected"})

#: While a problem lasts, the same line is logged again this often (seconds).
REPEAT_LOG_S = 60.0


def cannot_reach_message(problem: ConnectionProblem, bootstrap_servers: str) -> str:
    """ "cannot reach Kafka at HOST:PORT: REASON": the server concerned (else the bootstrap list),
    and the diagnosis's sentence, which names the cause and the setting to change."""
    return f"cannot reach Kafka at {problem.server or bootstrap_servers}: {problem.message}"


class ConnectionWatch:
    """The last diagnosis of the connection to the cluster, and when to run the next one.

    Parameters
    ----------
    bootstrap_servers, security
        The cluster and how the service connects to it.
    interval_s
        Least time between two diagnoses the loop asks for (:meth:`check`).
    timeout_s
        How long one diagnosis may wait for each server.
    diagnose, clock
        The diagnosis and the monotonic clock (tests pass fakes).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        security: KafkaSecurity,
        *,
        interval_s: float = 10.0,
        timeout_s: float = 3.0,
        diagnose: Callable[..., ConnectionProblem | None] = diagnose_connection,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.security = security
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._diagnose = diagnose
        self._clock = clock
        #: The problem the last diagnosis found; ``None`` when it found none (or none ran yet).
        self.problem: ConnectionProblem | None = None
        self._next_check = 0.0
        self._last_logged = (None, -REPEAT_LOG_S)  # (problem, when)
        self._worker: threading.Thread | None = None

    def check(self, *, force: bool = False) -> ConnectionProblem | None:
        """Diagnose now if ``force`` or if the last diagnosis is ``interval_s`` old; the problem."""
        now = self._clock()
        if not force and now < self._next_check:
            return self.problem
        self._next_check = now + self.interval_s
        try:
            problem = self._diagnose(self.bootstrap_servers, self.security, timeout_s=self.timeout_s)
        except Exception as error:  # a bug in the diagnosis must not stop the service
            log.debug("the connection diagnosis failed: %r", error)
            return self.problem
        self._report(problem, now)
        self.problem = problem
        return problem

    def check_soon(self) -> None:
        """:meth:`check` on a thread of its own, unless one is running or the last is recent: the
        caller (the loop) goes on, and reads :attr:`problem` when it is there."""
        if self._worker is not None and self._worker.is_alive():
            return
        if self._clock() < self._next_check:
            return
        self._worker = threading.Thread(target=self.check, name="connection-diagnosis", daemon=True)
        self._worker.start()

    def clear(self) -> None:
        """The client is connected: whatever the last diagnosis found has passed."""
        if self.problem is not None:
            self._report(None, self._clock())
        self.problem = None

    def wait_until_ok(self, stopped: threading.Event, *, max_wait_s: float = 10.0) -> bool:
        """Diagnose until no problem is found (True) or ``stopped`` is set (False), waiting a
        growing while (at most ``max_wait_s``) between diagnoses."""
        wait = 1.0
        while not stopped.is_set():
            if self.check(force=True) is None:
                return True
            stopped.wait(wait)
            wait = min(wait * 2, max_wait_s)
        return False

    def _report(self, problem: ConnectionProblem | None, now: float) -> None:
        logged, when = self._last_logged
        if problem == logged and now - when < REPEAT_LOG_S:
            return
        if problem is None:
            if logged is not None:
                log.info("Kafka at %s is reachable again", self.bootstrap_servers)
        else:
            level = logging.WARNING if problem.code in PASSING_CODES else logging.ERROR
            log.log(level, "%s [%s]", cannot_reach_message(problem, self.bootstrap_servers), problem.code)
        self._last_logged = (problem, now)
