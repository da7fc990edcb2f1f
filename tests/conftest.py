"""Shared fixtures and helpers of the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ELEC2 = SHARED_DATA / "elec2.csv"


@pytest.fixture
def elec2_path() -> Path:
    """The Electricity stream from ../shared/data; tests that need it skip when it is absent."""
    if not ELEC2.is_file():
        pytest.skip(f"Elec2 data not found at {ELEC2} (it lives in the project's shared/ folder)")
    return ELEC2
