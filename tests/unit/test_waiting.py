"""The tests' wait helper: a message given as a function describes the state at the deadline."""

from __future__ import annotations

import pytest

from tests.waiting import wait_for


def test_a_message_function_is_called_at_the_deadline_not_before() -> None:
    log: list[str] = ["started"]
    calls = 0

    def condition() -> bool:
        nonlocal calls
        calls += 1
        log.append(f"try {calls}")
        return False

    with pytest.raises(AssertionError) as failure:
        wait_for(condition, 0.05, lambda: f"something; log: {', '.join(log)}", interval=0.01)
    assert f"try {calls}" in str(failure.value)  # the last line, written after the wait began
    assert calls >= 2


def test_the_result_of_a_condition_is_returned_and_the_message_never_built() -> None:
    def never() -> str:
        raise AssertionError("the message was built although the wait succeeded")

    assert wait_for(lambda: 42, 1.0, never) == 42


def test_a_plain_message_still_works() -> None:
    with pytest.raises(AssertionError, match="timed out after 0 s waiting for nothing"):
        wait_for(lambda: None, 0.0, "nothing", interval=0.0)
