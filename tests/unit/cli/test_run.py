"""`stream-lstm run`'s own decisions: whether the LSTM gets a process, and how its settings resolve."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("setting", "cpus", "expected"),
    [("auto", 1, False), ("auto", 2, True), (True, 1, True), (False, 4, False)],
)
def test_run_gives_the_lstm_a_process_of_its_own_where_a_second_cpu_is_there(
    monkeypatch: pytest.MonkeyPatch, setting: bool | str, cpus: int, expected: bool
) -> None:
    from stream_lstm.cli.run import use_learner_process

    monkeypatch.setattr("stream_lstm.learner.cpu_threads.usable_cpus", lambda: cpus)
    assert use_learner_process(setting) is expected


def test_learner_process_setting_from_flag_and_env() -> None:
    from stream_lstm.cli.main import build_parser
    from stream_lstm.config.declared import RUN_SETTINGS
    from stream_lstm.config.setting import resolve_settings
    from stream_lstm.errors import ConfigError

    def resolved(argv: list[str], environ: dict[str, str]) -> bool | str:
        return resolve_settings(build_parser().parse_args(["run", *argv]), RUN_SETTINGS, environ=environ)[
            "learner_process"
        ]

    assert resolved([], {}) == "auto"
    assert resolved(["--learner-process", "false"], {"STREAM_LSTM_LEARNER_PROCESS": "true"}) is False
    assert resolved([], {"STREAM_LSTM_LEARNER_PROCESS": "true"}) is True
    with pytest.raises(ConfigError, match="expected auto, true or false"):
        resolved([], {"STREAM_LSTM_LEARNER_PROCESS": "2"})
