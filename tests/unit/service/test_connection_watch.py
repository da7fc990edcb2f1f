"""The connection watch: diagnoses when asked (rate-limited), logs once per change, gates the start."""

from __future__ import annotations

import logging
import threading

import pytest

from stream_lstm.kafka.connection_check import ConnectionProblem
from stream_lstm.kafka.security import PLAINTEXT
from stream_lstm.service.connection_watch import REPEAT_LOG_S, ConnectionWatch
from stream_lstm.service.health import Health
from stream_lstm.telemetry.metrics import Telemetry
from tests.waiting import wait_for

WRONG_PASSWORD = ConnectionProblem("sasl_authentication_failed", "wrong user name or password", "b:9093")
AWAY = ConnectionProblem("unreachable", "nothing listens at b:9093", "b:9093")


class Script:
    """A diagnosis that answers from a list, and a clock the test moves."""

    def __init__(self, *answers: ConnectionProblem | None) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.now = 0.0

    def diagnose(self, bootstrap: str, security: object, *, timeout_s: float) -> ConnectionProblem | None:
        self.calls += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def watch(self) -> ConnectionWatch:
        return ConnectionWatch(
            "b:9093", PLAINTEXT, interval_s=10, diagnose=self.diagnose, clock=lambda: self.now
        )


def test_check_diagnoses_at_most_once_per_interval_unless_forced() -> None:
    script = Script(WRONG_PASSWORD)
    watch = script.watch()
    assert watch.check() == WRONG_PASSWORD and script.calls == 1
    script.now = 5
    assert watch.check() == WRONG_PASSWORD and script.calls == 1
    assert watch.check(force=True) == WRONG_PASSWORD and script.calls == 2
    script.now = 16
    watch.check()
    assert script.calls == 3


def test_a_problem_is_logged_once_per_change_and_again_only_after_a_while(caplog) -> None:
    caplog.set_level(logging.INFO, logger="stream_lstm.service.connection_watch")
    script = Script(WRONG_PASSWORD, WRONG_PASSWORD, AWAY, None)
    watch = script.watch()
    for now in (0, 10, 20, 30):
        script.now = now
        watch.check()
    lines = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert lines == [
        ("ERROR", "cannot reach Kafka at b:9093: wrong user name or password [sasl_authentication_failed]"),
        ("WARNING", "cannot reach Kafka at b:9093: nothing listens at b:9093 [unreachable]"),
        ("INFO", "Kafka at b:9093 is reachable again"),
    ]
    caplog.clear()
    script.answers = [WRONG_PASSWORD]
    for now in (40, 50, 40 + REPEAT_LOG_S + 1):
        script.now = now
        watch.check()
    assert len(caplog.records) == 2  # once, then again after REPEAT_LOG_S


def test_wait_until_ok_returns_once_the_problem_passes_or_false_when_stopped() -> None:
    script = Script(AWAY, None)
    watch = script.watch()
    assert watch.wait_until_ok(threading.Event(), max_wait_s=0.01) is True and script.calls == 2
    stopped = threading.Event()
    stopped.set()
    assert Script(AWAY).watch().wait_until_ok(stopped) is False


def test_a_failing_diagnosis_changes_nothing() -> None:
    def broken(*args: object, **kwargs: object) -> ConnectionProblem | None:
        raise RuntimeError("a bug")

    watch = ConnectionWatch("b:9093", PLAINTEXT, diagnose=broken)
    assert watch.check() is None


@pytest.mark.parametrize("connected_after", [False, True])
def test_health_names_the_diagnosed_cause_instead_of_the_clients_error(connected_after: bool) -> None:
    watch = Script(WRONG_PASSWORD).watch()
    health = Health("b:9093", Telemetry(), watch)
    health.set_connected(False, "NoBrokersAvailable")
    wait_for(lambda: watch.problem is not None, 10, "the diagnosis in the background")
    ready, details = health.report(stopping=False, connected_client=False, events_learned=0)
    assert not ready and details["last_error"] == WRONG_PASSWORD.message
    assert details["kafka_connection"]["code"] == "sasl_authentication_failed"
    if connected_after:
        health.set_connected(True)
        assert health.report(stopping=False, connected_client=True, events_learned=0)[1][
            "kafka_connection"
        ] == {"ok": True}


def test_check_soon_diagnoses_on_a_thread_of_its_own_and_never_two_at_once() -> None:
    release = threading.Event()
    calls = []

    def slow(bootstrap: str, security: object, *, timeout_s: float) -> ConnectionProblem | None:
        calls.append(1)
        release.wait(10)
        return AWAY

    watch = ConnectionWatch("b:9093", PLAINTEXT, interval_s=0, diagnose=slow)
    watch.check_soon()  # returns at once: the loop does not wait for the diagnosis
    watch.check_soon()  # one is running: no second
    wait_for(lambda: calls, 10, "the diagnosis to start")
    assert watch.problem is None and len(calls) == 1
    release.set()
    wait_for(lambda: watch.problem == AWAY, 10, "the diagnosis to finish")
    assert len(calls) == 1
