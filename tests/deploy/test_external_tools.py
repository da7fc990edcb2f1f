"""A missing Prometheus, promtool or docker-compose skips its tests, except in CI, where it fails."""

from __future__ import annotations

import pytest

from tests.deploy.external_tools import required_tool


def test_a_present_tool_is_found_by_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setenv("CI", "true")
    assert required_tool("promtool") == "/usr/bin/promtool"


@pytest.mark.parametrize("ci", [None, ""])
def test_a_missing_tool_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="prometheus is not installed"):
        required_tool("prometheus")


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_a_missing_tool_fails_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"docker-compose is not installed.*CI is set"):
        required_tool("docker-compose")
