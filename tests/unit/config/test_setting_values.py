"""The parsers of ports, log levels and bootstrap lists, where a refused value's message says it came
from, and the warning about ``STREAM_LSTM_*`` variables that no setting reads."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_lstm.config.declared import RUN_SETTINGS, start_position
from stream_lstm.config.setting import (
    add_settings,
    host_port_list,
    known_variables,
    log_level,
    port,
    port_or_any,
    resolve_settings,
    stream_rate_half_life,
    trend_scales,
    unknown_variable_warnings,
)
from stream_lstm.errors import ConfigError
from stream_lstm.messages.stream_rate import DEFAULT_STREAM_RATE_HALF_LIFE
from stream_lstm.messages.trend_scales import DEFAULT_TREND_SCALES, MAX_TREND_SCALES


@pytest.mark.parametrize(("text", "expected"), [("1", 1), ("9092", 9092), ("65535", 65535), (" 80 ", 80)])
def test_a_port_is_1_to_65535(text: str, expected: int) -> None:
    assert port(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "a port is 1 to 65535, got 0"),
        ("65536", "got 65536"),
        ("70000", "got 70000"),
        ("-1", "got -1"),
        ("http", "expected a whole number, got 'http'"),
        ("", "expected a whole number"),
    ],
)
def test_a_port_out_of_range_or_not_a_number_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        port(text)


def test_port_or_any_takes_0_for_any_free_port_and_nothing_above_65535() -> None:
    assert port_or_any("0") == 0 and port_or_any("65535") == 65535
    with pytest.raises(ValueError, match=r"or 0: any free port\), got 65536"):
        port_or_any("65536")


@given(st.integers())
def test_every_integer_is_a_port_or_refused_with_a_value_error(number: int) -> None:
    try:
        assert port(str(number)) == number and 1 <= number <= 65535
    except ValueError:
        assert not 1 <= number <= 65535


@pytest.mark.parametrize(("text", "expected"), [("debug", "DEBUG"), ("Info", "INFO"), ("WARNING", "WARNING")])
def test_a_log_level_is_taken_in_any_case(text: str, expected: str) -> None:
    assert log_level(text) == expected


@pytest.mark.parametrize("text", ["verbose", "warn", "CRITICAL", "", "10"])
def test_other_log_levels_are_refused_naming_the_four(text: str) -> None:
    with pytest.raises(ValueError, match="expected one of DEBUG, INFO, WARNING, ERROR"):
        log_level(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9092", "127.0.0.1:9092"),
        (
            "broker-1.example.com:9093, broker-2.example.com:9093",
            "broker-1.example.com:9093,broker-2.example.com:9093",
        ),
        ("[::1]:9092", "[::1]:9092"),
        ("[fe80::1]:1,kafka:65535", "[fe80::1]:1,kafka:65535"),
    ],
)
def test_a_host_port_list_is_taken_with_its_items_stripped(text: str, expected: str) -> None:
    assert host_port_list(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1", "'1' is not HOST:PORT"),
        ("kafka", "'kafka' is not HOST:PORT"),
        (":9092", "':9092' is not HOST:PORT"),
        ("kafka:", "the port must be a number"),
        ("kafka:70000", "'kafka:70000': a port is 1 to 65535, got 70000"),
        ("kafka:0", "got 0"),
        ("kafka:http", "the port must be a number, got 'http'"),
        ("::1:9092", r"write an IPv6 address in brackets, e.g. \[::1\]:9092"),
        ("[kafka]:9092", "in brackets is not an IPv6 address"),
        ("kafka://broker:9092", "'kafka://broker:9092' is not HOST:PORT"),
        ("a b:9092", "'a b:9092' is not HOST:PORT"),
        ("kafka:9092,", "an empty item in the list"),
        ("", "expected HOST:PORT"),
    ],
)
def test_a_bad_host_port_list_is_refused_saying_which_item_and_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        host_port_list(text)


@given(st.text(max_size=60))
def test_any_text_is_a_host_port_list_or_refused_with_a_value_error(text: str) -> None:
    try:
        parsed = host_port_list(text)
    except ValueError:
        return
    assert host_port_list(parsed) == parsed  # what it gives back is taken again unchanged
    for item in parsed.split(","):
        assert 1 <= int(item.rpartition(":")[2]) <= 65535


_HOSTS = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda address: f"[{address}]"),
)


@given(st.lists(st.tuples(_HOSTS, st.integers(1, 65535)), min_size=1, max_size=4))
def test_every_list_of_hosts_and_valid_ports_is_taken(servers: list[tuple[str, int]]) -> None:
    text = ",".join(f"{host}:{number}" for host, number in servers)
    assert host_port_list(text) == text


def test_start_from_is_earliest_or_latest_in_any_case() -> None:
    assert start_position("Latest") == "latest" and start_position("earliest") == "earliest"
    with pytest.raises(ValueError, match="expected earliest or latest, got 'newest'"):
        start_position("newest")


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--config")
    add_settings(parser, RUN_SETTINGS)
    return parser


def test_a_refused_value_of_the_environment_names_the_variable_and_its_value() -> None:
    args = _run_parser().parse_args([])
    with pytest.raises(ConfigError, match=r"^STREAM_LSTM_METRICS_PORT=70000: a port is 1 to 65535"):
        resolve_settings(args, RUN_SETTINGS, environ={"STREAM_LSTM_METRICS_PORT": "70000"})
    with pytest.raises(ConfigError, match=r"^STREAM_LSTM_LOG_LEVEL=verbose: expected one of"):
        resolve_settings(args, RUN_SETTINGS, environ={"STREAM_LSTM_LOG_LEVEL": "verbose"})


def test_a_refused_value_of_the_settings_file_names_the_file_and_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "service.toml"
    config.write_text('bootstrap-servers = "kafka"\n')
    args = _run_parser().parse_args(["--config", str(config)])
    with pytest.raises(ConfigError, match=f"^{config}: bootstrap_servers = kafka: 'kafka' is not HOST:PORT"):
        resolve_settings(args, RUN_SETTINGS, environ={})


def test_a_refused_value_never_shows_a_whole_page_of_it() -> None:
    args = _run_parser().parse_args([])
    with pytest.raises(ConfigError) as refused:
        resolve_settings(args, RUN_SETTINGS, environ={"STREAM_LSTM_METRICS_PORT": "9" * 1000})
    assert len(str(refused.value)) < 300


def test_the_command_line_wins_over_a_bad_environment_value() -> None:
    args = _run_parser().parse_args(["--metrics-port", "9200"])
    values = resolve_settings(args, RUN_SETTINGS, environ={"STREAM_LSTM_METRICS_PORT": "70000"})
    assert values["metrics_port"] == 9200


def test_a_variable_no_setting_reads_is_warned_about_with_the_one_it_may_mean() -> None:
    known = known_variables(RUN_SETTINGS)
    environ = {
        "STREAM_LSTM_BOOTSTRAP": "kafka:9092",
        "STREAM_LSTM_METRIC_PORT": "9200",
        "STREAM_LSTM_COLOUR": "blue",
        "STREAM_LSTM_BOOTSTRAP_SERVERS": "kafka:9092",  # a setting
        "STREAM_LSTM_SASL_PASSWORD_FILE": "/run/secrets/kafka",  # a secret setting's file
        "STREAM_LSTM_CONFIG": "service.toml",  # the settings file
        "OTHER_BOOTSTRAP": "x",  # not ours
    }
    assert unknown_variable_warnings(environ, known) == [
        "STREAM_LSTM_BOOTSTRAP is not a setting of stream-lstm and is ignored; "
        "did you mean STREAM_LSTM_BOOTSTRAP_SERVERS?",
        "STREAM_LSTM_COLOUR is not a setting of stream-lstm and is ignored",
        "STREAM_LSTM_METRIC_PORT is not a setting of stream-lstm and is ignored; "
        "did you mean STREAM_LSTM_METRICS_PORT?",
    ]


def test_trend_scales_are_0_to_the_learners_bound_and_a_refusal_names_the_variable() -> None:
    assert [trend_scales(str(n)) for n in range(MAX_TREND_SCALES + 1)] == list(range(MAX_TREND_SCALES + 1))
    for text in ("-1", str(MAX_TREND_SCALES + 1), "two", "1.5"):
        with pytest.raises(ValueError):
            trend_scales(text)
    args = _run_parser().parse_args([])
    assert resolve_settings(args, RUN_SETTINGS, environ={})["trend_scales"] == DEFAULT_TREND_SCALES
    with pytest.raises(ConfigError, match=r"^STREAM_LSTM_TREND_SCALES=9: trend_scales must be an integer"):
        resolve_settings(args, RUN_SETTINGS, environ={"STREAM_LSTM_TREND_SCALES": "9"})


def test_the_stream_rate_half_life_is_0_or_1_to_the_bound_and_a_refusal_names_the_variable() -> None:
    assert [stream_rate_half_life(text) for text in ("0", "1", "14", "2.5", "1e6")] == [0, 1, 14, 2.5, 1e6]
    for text in ("-1", "0.5", "1e7", "nan", "inf", "fourteen"):
        with pytest.raises(ValueError):
            stream_rate_half_life(text)
    args = _run_parser().parse_args([])
    resolved = resolve_settings(args, RUN_SETTINGS, environ={})
    assert resolved["stream_rate_half_life"] == DEFAULT_STREAM_RATE_HALF_LIFE
    with pytest.raises(
        ConfigError, match=r"^STREAM_LSTM_STREAM_RATE_HALF_LIFE=0.5: stream_rate_half_life must be 0"
    ):
        resolve_settings(args, RUN_SETTINGS, environ={"STREAM_LSTM_STREAM_RATE_HALF_LIFE": "0.5"})
