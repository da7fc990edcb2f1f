"""`stream-lstm evaluate` from the command line: report, JSON, plot, bad rows, bad flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream_lstm.cli.main import main
from stream_lstm.errors import ConfigError
from stream_lstm.offline.generator import temporal_stream, write_csv


@pytest.fixture
def stream_csv(tmp_path: Path) -> Path:
    path = tmp_path / "stream.csv"
    write_csv(temporal_stream(600, n_keys=5, seed=4), path)
    with path.open("a") as handle:  # two bad rows at known lines: 602 and 603
        handle.write("k1,1700001000,1,not-a-number,0.5,\n")
        handle.write("k1,1700001001,2,0.1,0.2,0.3\n")
    return path


def test_evaluate_writes_table_json_and_plot(
    stream_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    report_path, plot_path = tmp_path / "report.json", tmp_path / "rolling.png"
    status = main(
        [
            "evaluate", str(stream_csv), "--label", "label", "--key", "key", "--ts", "ts",
            "--batch-size", "16", "--json", str(report_path), "--plot", str(plot_path),
            "--hidden-size", "8", "--device", "cpu",
        ]
    )  # fmt: skip
    assert status == 0
    out, err = capsys.readouterr()
    assert "600 events (600 labelled, 2 bad rows skipped)" in out
    for name in ("lstm", "logreg", "no_change"):
        assert name in out
    assert f"{stream_csv}:602: skipped: column 'a' is text ('not-a-number'), not a number" in err
    assert f"{stream_csv}:603: skipped: label must be 0, 1, true, false or empty" in err
    report = json.loads(report_path.read_text())
    assert report["events"] == 600 and report["skipped"] == 2
    assert report["seconds"] > 0 and report["events_per_second"] > 0
    assert [bad["line"] for bad in report["bad_rows"]] == [602, 603]
    for name in ("lstm", "logreg", "no_change"):
        assert set(report["models"][name]) >= {"accuracy", "log_loss", "roc_auc", "kappa_temporal"}
        assert 0 <= report["models"][name]["accuracy"] <= 1
    assert report["lstm"]["hidden_size"] == 8
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_models_subset_and_limit(stream_csv: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "r.json"
    args = ["evaluate", str(stream_csv), "--label", "label", "--key", "key", "--models", "logreg,no_change"]
    assert main([*args, "--limit", "100", "--json", str(report_path), "--no-progress"]) == 0
    report = json.loads(report_path.read_text())
    assert set(report["models"]) == {"logreg", "no_change"} and report["events"] == 100
    assert report["lstm"] is None


def test_settings_come_from_env_and_toml_with_flags_winning(
    stream_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('label = "label"\nkey = "key"\nbatch-size = 5\nmodels = ["no_change"]\n')
    report_path = tmp_path / "r.json"
    monkeypatch.setenv("STREAM_LSTM_BATCH_SIZE", "7")
    assert main(["evaluate", str(stream_csv), "--config", str(config), "--json", str(report_path)]) == 0
    assert json.loads(report_path.read_text())["batch_size"] == 7  # env beats the file
    assert (
        main(
            [
                "evaluate",
                str(stream_csv),
                "--config",
                str(config),
                "--batch-size",
                "9",
                "--json",
                str(report_path),
            ]
        )
        == 0
    )
    assert json.loads(report_path.read_text())["batch_size"] == 9  # the flag beats env


@pytest.mark.parametrize(
    ("flags", "env", "toml", "expected"),
    [
        ([], None, None, "auto"),
        (["--parallel"], None, None, True),  # a bare flag means true, as for every true/false flag
        (["--parallel", "false"], "true", None, False),
        ([], "AUTO", "parallel = false", "auto"),
        ([], None, "parallel = true", True),
        ([], None, 'parallel = "auto"', "auto"),
    ],
)
def test_parallel_setting_from_flag_env_and_toml(
    tmp_path: Path, flags: list[str], env: str | None, toml: str | None, expected: bool | str
) -> None:
    from stream_lstm.cli.main import build_parser
    from stream_lstm.config.declared import EVALUATE_SETTINGS
    from stream_lstm.config.setting import resolve_settings

    argv = ["evaluate", "x.csv", "--label", "y", *flags]
    if toml is not None:
        (tmp_path / "s.toml").write_text(toml + "\n")
        argv += ["--config", str(tmp_path / "s.toml")]
    environ = {} if env is None else {"STREAM_LSTM_PARALLEL": env}
    settings = resolve_settings(build_parser().parse_args(argv), EVALUATE_SETTINGS, environ=environ)
    assert settings["parallel"] == expected
    with pytest.raises(ConfigError, match="expected auto, true or false"):
        resolve_settings(
            build_parser().parse_args(argv[:4]), EVALUATE_SETTINGS, environ={"STREAM_LSTM_PARALLEL": "2"}
        )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "x.csv", "--label", "y", "--batch-size", "0"], "must be at least 1"),
        (["evaluate", "x.csv", "--label", "y", "--models", "lstm,forest"], "unknown model(s) forest"),
        (["evaluate", "x.csv", "--bogus"], "unrecognized arguments: --bogus"),
        (["evaluate", "x.csv"], "needs the label column"),
    ],
)
def test_bad_flags_exit_2_with_usage(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err


def test_bad_settings_from_env_or_file_or_data_are_clear_errors(
    stream_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("STREAM_LSTM_WINDOW", "many")
    assert main(["evaluate", str(stream_csv), "--label", "label"]) == 2
    assert "STREAM_LSTM_WINDOW=many: expected a whole number" in capsys.readouterr().err
    monkeypatch.delenv("STREAM_LSTM_WINDOW")
    config = tmp_path / "bad.toml"
    config.write_text("batch_sise = 3\n")
    assert main(["evaluate", str(stream_csv), "--label", "label", "--config", str(config)]) == 2
    assert "unknown setting(s) batch_sise" in capsys.readouterr().err
    assert main(["evaluate", str(stream_csv), "--label", "nope"]) == 2
    assert "label column 'nope' is not in" in capsys.readouterr().err
    assert (
        main(["evaluate", str(stream_csv), "--label", "label", "--batch-size", "64", "--max-keys", "10"]) == 2
    )
    assert "max_keys" in capsys.readouterr().err


def test_console_script_help_documents_every_flag_with_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stream_lstm", "evaluate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in ("--label", "--batch-size", "--tbptt-steps", "--json", "--plot", "--models", "--device"):
        assert flag in result.stdout
    assert "STREAM_LSTM_BATCH_SIZE" in result.stdout and "(default: 64;" in result.stdout


def _scores(report: dict) -> dict:
    """Each model's scores, without its (timing-dependent) events/s."""
    return {
        name: {metric: value for metric, value in scores.items() if metric != "events_per_second"}
        for name, scores in report["models"].items()
    }


def _blank_some_labels(path: Path) -> None:
    """Leave the label out of every seventh event of a generated file (its third column)."""
    lines = path.read_text().splitlines()
    for number in range(7, 601, 7):
        cells = lines[number].split(",")
        cells[2] = ""
        lines[number] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("models", ["logreg,lstm,no_change,mix", "logreg,lstm,no_change"])
def test_baselines_in_a_second_process_score_exactly_as_in_one(
    stream_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    models: str,
) -> None:
    """`--parallel true` runs the baselines and the mixture beside the LSTM, and scores the LSTM
    there too, from its probabilities; the report, the bad rows, the model order and the plotted
    curves must be those of a single process, with events without a label among them, and the
    LSTM's events/s its own time's in the first process."""
    monkeypatch.setattr("stream_lstm.learner.cpu_threads.usable_cpus", lambda: 2)  # also on a 1-CPU machine
    _blank_some_labels(stream_csv)
    reports = {}
    for parallel in ("true", "false"):
        report_path = tmp_path / f"{parallel}.json"
        argv = [
            "evaluate", str(stream_csv), "--label", "label", "--key", "key", "--ts", "ts",
            "--batch-size", "16", "--hidden-size", "8", "--device", "cpu",
            "--models", models, "--plot", str(tmp_path / f"{parallel}.png"),
            "--json", str(report_path), "--no-progress", "--parallel", parallel,
        ]  # fmt: skip
        assert main(argv) == 0
        reports[parallel] = json.loads(report_path.read_text())
        err = capsys.readouterr().err
        assert err.count(":602: skipped") == err.count(":603: skipped") == 1  # reported once
    together, apart = reports["false"], reports["true"]
    assert (apart["processes"], together["processes"]) == (2, 1)
    assert list(apart["models"]) == list(together["models"]) == models.split(",")
    assert _scores(apart) == _scores(together)
    assert apart["events"] == together["events"] == 600
    assert apart["labelled"] == together["labelled"] == 600 - 85
    assert apart["skipped"] == together["skipped"] == 2
    assert apart["guards"]["lstm"] == together["guards"]["lstm"]
    assert all(
        report["models"][name]["events_per_second"] > 0
        for report in reports.values()
        for name in report["models"]
    )
    assert (tmp_path / "true.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("parallel", "threshold", "cpus", "processes"),
    [
        ("auto", 600, 2, 2),  # a file of at least the threshold, two CPUs
        ("auto", 601, 2, 1),  # shorter than the threshold: the second process would not pay off
        ("auto", 600, 1, 1),  # one CPU
        ("true", 10**9, 1, 2),  # asked for: used whatever the file and the CPUs
        ("false", 600, 2, 1),
    ],
)
def test_parallel_auto_uses_a_second_process_only_where_it_pays_off(
    stream_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    parallel: str,
    threshold: int,
    cpus: int,
    processes: int,
) -> None:
    """The file has 602 data rows (600 events, 2 bad rows); `auto` counts rows, and needs at
    least PARALLEL_MIN_EVENTS of them and 2 usable CPUs."""
    monkeypatch.setattr("stream_lstm.cli.evaluate.PARALLEL_MIN_EVENTS", threshold)
    monkeypatch.setattr("stream_lstm.learner.cpu_threads.usable_cpus", lambda: cpus)
    report_path = tmp_path / "report.json"
    argv = [
        "evaluate", str(stream_csv), "--label", "label", "--key", "key", "--limit", "600",
        "--hidden-size", "8", "--device", "cpu", "--json", str(report_path), "--no-progress",
        "--parallel", parallel,
    ]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(report_path.read_text())["processes"] == processes


def test_a_closed_stdout_ends_the_command_quietly(stream_csv: Path) -> None:
    """`stream-lstm evaluate ... | head -1`: the reader going away is no crash with a traceback."""
    command = [
        sys.executable,
        "-m",
        "stream_lstm",
        "evaluate",
        str(stream_csv),
        "--label",
        "label",
        "--key",
        "key",
    ]
    process = subprocess.Popen(
        [*command, "--models", "no_change", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the command prints anything
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert "Traceback" not in err, err
