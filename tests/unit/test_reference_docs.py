"""docs/reference/ is what the code renders from its own declarations (settings and metrics)."""

from __future__ import annotations

import pytest

from stream_lstm.cli.reference import REFERENCE_DIR, REFERENCE_FILES, REGENERATE, main
from stream_lstm.config.declared import EVALUATE_SETTINGS, PRODUCE_SETTINGS, RUN_SETTINGS
from stream_lstm.telemetry.metrics import METRICS


@pytest.mark.parametrize("name", sorted(REFERENCE_FILES))
def test_the_committed_reference_matches_the_declarations(name: str) -> None:
    path = REFERENCE_DIR / name
    assert path.is_file(), f"docs/reference/{name} is missing: run `{REGENERATE}`"
    assert path.read_text() == REFERENCE_FILES[name](), (
        f"docs/reference/{name} differs from the declarations in the code: run `{REGENERATE}`"
    )


def test_the_reference_names_every_setting_and_every_metric() -> None:
    settings = REFERENCE_FILES["settings.md"]()
    for setting in (*RUN_SETTINGS, *EVALUATE_SETTINGS, *PRODUCE_SETTINGS):
        if setting.secret:
            expected = (
                f"| `{setting.flag}`<br>`{setting.flag}-file` | `{setting.env}`<br>`{setting.env}_FILE` "
                f"| `{setting.name}`<br>`{setting.file_name}` |"
            )
        else:
            expected = f"| `{setting.flag}` | `{setting.env}` | `{setting.name}` |"
        assert expected in settings, setting.name
    metrics = REFERENCE_FILES["metrics.md"]()
    for declaration in METRICS:
        assert f"| `{declaration.name}` |" in metrics, declaration.name
        assert declaration.help in metrics, declaration.name


def test_the_check_fails_on_a_stale_file_and_write_repairs_it(tmp_path, capsys) -> None:
    assert main(["--dir", str(tmp_path)]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert main(["--write", "--dir", str(tmp_path)]) == 0
    assert main(["--dir", str(tmp_path)]) == 0
    (tmp_path / "metrics.md").write_text("edited by hand\n")
    assert main(["--dir", str(tmp_path)]) == 1
