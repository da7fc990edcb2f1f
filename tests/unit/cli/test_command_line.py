"""The command line refuses what it cannot use, with the command's own usage and exit status 2.

Abbreviated flags, ports, log levels and bootstrap lists (from the command line, the environment
or the settings file), a handler's usage errors, unknown ``STREAM_LSTM_*`` variables, and the
commands that need a broker when none can be reached: each case is refused in one clear line.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_lstm.cli.main import main


def exit_status(argv: list[str]) -> int:
    """What ``stream-lstm ARGV`` exits with: argparse's errors exit, the others return."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return int(exit_info.code or 0)


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("STREAM_LSTM_"):
            monkeypatch.delenv(name)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port of 127.0.0.1 bound but not listening: every connection to it is refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["run", "--bootstrap", "1"], "flags are never abbreviated: did you mean --bootstrap-servers?"),
        (["run", "--metrics-p=9200"], "flags are never abbreviated: did you mean --metrics-port?"),
        (["produce", "--synth"], "flags are never abbreviated: did you mean --synthetic?"),
        (["run", "--metrics-prot", "9200"], "did you mean --metrics-port?"),
    ],
)
def test_an_abbreviated_or_misspelt_flag_is_refused_with_the_flag_it_may_mean(
    argv: list[str], hint: str, capsys: pytest.CaptureFixture
) -> None:
    assert exit_status(argv) == 2
    err = capsys.readouterr().err
    assert f"usage: stream-lstm {argv[0]} " in err
    assert f"stream-lstm {argv[0]}: error: unrecognized arguments: {' '.join(argv[1:])}; {hint}" in err


def test_the_top_level_parser_takes_no_abbreviations_either(capsys: pytest.CaptureFixture) -> None:
    assert exit_status(["--vers"]) == 2
    assert "stream-lstm: error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["run", "--metrics-port", "70000"],
            "argument --metrics-port: a port is 1 to 65535 (or 0: any free port), got 70000",
        ),
        (["run", "--metrics-port", "-1"], "argument --metrics-port: a port is 1 to 65535"),
        (
            ["run", "--log-level", "verbose"],
            "argument --log-level: expected one of DEBUG, INFO, WARNING, ERROR, got 'verbose'",
        ),
        (["run", "--bootstrap-servers", "1"], "argument --bootstrap-servers: '1' is not HOST:PORT"),
        (
            ["run", "--bootstrap-servers", "kafka:9092,kafka:99999"],
            "argument --bootstrap-servers: 'kafka:99999': a port is 1 to 65535, got 99999",
        ),
        (
            ["run", "--bootstrap-servers", "::1:9092"],
            "argument --bootstrap-servers: '::1:9092': write an IPv6 address in brackets, e.g. [::1]:9092",
        ),
        (
            ["run", "--start-from", "newest"],
            "argument --start-from: expected earliest or latest, got 'newest'",
        ),
        (
            ["produce", "--synthetic", "--bootstrap-servers", "kafka"],
            "argument --bootstrap-servers: 'kafka' is not HOST:PORT",
        ),
        (
            ["demo", "--bootstrap-servers", "kafka:0"],
            "argument --bootstrap-servers: 'kafka:0': a port is 1 to 65535, got 0",
        ),
        (["demo", "--metrics-port", "0"], "argument --metrics-port: a port is 1 to 65535, got 0"),
        (
            ["broker", "--port", "65536"],
            "argument --port: a port is 1 to 65535 (or 0: any free port), got 65536",
        ),
    ],
)
def test_a_bad_flag_value_is_refused_with_the_commands_usage(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert exit_status(argv) == 2
    err = capsys.readouterr().err
    assert f"usage: stream-lstm {argv[0]} " in err
    assert f"stream-lstm {argv[0]}: error: {message}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("STREAM_LSTM_METRICS_PORT", "70000", "STREAM_LSTM_METRICS_PORT=70000: a port is 1 to 65535"),
        ("STREAM_LSTM_LOG_LEVEL", "verbose", "STREAM_LSTM_LOG_LEVEL=verbose: expected one of DEBUG"),
        ("STREAM_LSTM_BOOTSTRAP_SERVERS", "1", "STREAM_LSTM_BOOTSTRAP_SERVERS=1: '1' is not HOST:PORT"),
        ("STREAM_LSTM_START_FROM", "now", "STREAM_LSTM_START_FROM=now: expected earliest or latest"),
    ],
)
def test_a_bad_environment_value_is_refused_with_the_commands_usage_naming_the_variable(
    variable: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv(variable, value)
    assert exit_status(["run"]) == 2
    err = capsys.readouterr().err
    assert "usage: stream-lstm run " in err
    assert f"stream-lstm run: error: {message}" in err


def test_a_bad_settings_file_value_is_refused_with_the_commands_usage_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "service.toml"
    config.write_text('metrics_port = 70000\nlog_level = "INFO"\n')
    assert exit_status(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "usage: stream-lstm run " in err
    assert f"stream-lstm run: error: {config}: metrics_port = 70000: a port is 1 to 65535" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["produce"], "give either FILE.csv or --synthetic"),
        (["produce", "events.csv"], "produce FILE.csv needs the label column"),
    ],
)
def test_a_usage_error_a_handler_finds_shows_its_commands_usage(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert exit_status(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: stream-lstm produce ")
    assert f"stream-lstm produce: error: {message}" in err


def test_an_unknown_variable_is_warned_about_once_naming_the_setting_it_may_mean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("STREAM_LSTM_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("STREAM_LSTM_SASL_PASSWORD_FILE", str(tmp_path / "password"))  # known: no warning
    monkeypatch.setenv("STREAM_LSTM_LABEL", "label")  # a setting of evaluate and produce: known to all
    assert exit_status(["generate", str(tmp_path / "stream.csv"), "--events", "10", "--keys", "2"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        "stream-lstm: warning: STREAM_LSTM_BOOTSTRAP is not a setting of stream-lstm and is ignored; "
        "did you mean STREAM_LSTM_BOOTSTRAP_SERVERS?"
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["produce", "--synthetic", "--limit", "5"],
        ["demo", "--events", "10"],
    ],
    ids=["produce", "demo"],
)
def test_a_command_without_a_broker_says_so_in_one_line_and_exits_2(
    argv: list[str], closed_port: int, tmp_path: Path
) -> None:
    """Before the fix, produce retried for 30 s and ended in a 40-line traceback: the deadline of
    the run catches a return of that, the assertions the rest."""
    server = f"127.0.0.1:{closed_port}"
    result = subprocess.run(
        [sys.executable, "-m", "stream_lstm", *argv, "--bootstrap-servers", server],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=25,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"stream-lstm: error: cannot reach Kafka at {server}: nothing accepts connections"
    )
    assert not (tmp_path / "demo-output").exists()  # the demo stopped before making anything
