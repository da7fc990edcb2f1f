"""RepeatFilter: a client library's repeated messages pass once per kind and interval."""

from __future__ import annotations

import io
import logging

from stream_lstm.telemetry.log_repeats import RepeatFilter


def test_repeats_of_a_kind_pass_once_per_interval_and_others_untouched() -> None:
    now = [0.0]
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    handler.addFilter(RepeatFilter(["test-repeats.kafka"], interval_s=60, clock=lambda: now[0]))
    loggers = {name: logging.getLogger(f"test-repeats.{name}") for name in ("kafka", "other")}
    for logger in loggers.values():
        logger.propagate = False
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    kafka, other = loggers["kafka"], loggers["other"]
    for port in range(5):
        kafka.error("connection to 127.0.0.1:%d refused (backoff %d ms)", 9000 + port, 50 * port)
        kafka.warning("connection to 127.0.0.1:%d refused (backoff %d ms)", 9000 + port, 50 * port)
        other.error("the service's own line %d", port)
    kafka.error("a different message")
    now[0] = 59.0
    kafka.error("connection to 127.0.0.1:1 refused (backoff 1 ms)")  # still within the interval
    now[0] = 61.0
    kafka.error("connection to 127.0.0.1:2 refused (backoff 2 ms)")
    lines = out.getvalue().splitlines()
    assert lines.count("test-repeats.kafka ERROR connection to 127.0.0.1:9000 refused (backoff 0 ms)") == 1
    assert lines.count("test-repeats.kafka WARNING connection to 127.0.0.1:9000 refused (backoff 0 ms)") == 1
    assert [line for line in lines if "other" in line] == [
        f"test-repeats.other ERROR the service's own line {port}" for port in range(5)
    ]
    assert "test-repeats.kafka ERROR a different message" in lines
    assert lines[-1] == (
        "test-repeats.kafka ERROR connection to 127.0.0.1:2 refused (backoff 2 ms) "
        "(5 more like it in the last 61 s not shown)"
    )
    assert len(lines) == 1 + 1 + 5 + 1 + 1


def test_a_logger_merely_starting_with_the_prefix_is_not_filtered() -> None:
    repeats = RepeatFilter(["kafka"], interval_s=60, clock=lambda: 0.0)

    def record(name: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, "", 0, "same text", (), None)

    assert [repeats.filter(record("kafkaesque")) for _ in range(3)] == [True, True, True]
    assert [repeats.filter(record("kafka")) for _ in range(2)] == [True, False]
    assert [repeats.filter(record("kafka.net")) for _ in range(2)] == [True, False]


def test_quiet_repeats_gives_every_root_handler_its_own_filter() -> None:
    """One filter shared by two handlers would hold each record back from the second one."""
    from stream_lstm.telemetry.log_repeats import quiet_repeats

    root = logging.getLogger()
    outs = [io.StringIO(), io.StringIO()]
    handlers = [logging.StreamHandler(out) for out in outs]
    saved = root.handlers[:], root.level
    root.handlers[:] = handlers
    root.setLevel(logging.INFO)
    try:
        quiet_repeats(["test-quiet.kafka"])
        logger = logging.getLogger("test-quiet.kafka.net")
        logger.error("connection 1 refused")
        logger.error("connection 2 refused")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert [out.getvalue().splitlines() for out in outs] == [["connection 1 refused"]] * 2
