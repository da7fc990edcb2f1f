"""The programs the deployment and Prometheus tests run: skipped without them, failed in CI.

.ci/run installs Debian's prometheus (the server and promtool) and docker-compose. On a
developer's machine a missing one skips its tests with the reason; where the ``CI`` variable is
set (any non-empty value) it fails them, so that a CI run cannot pass green without having run
them.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def required_tool(name: str) -> str:
    """The path of the program ``name``; skips the test without it, or fails it in CI."""
    path = shutil.which(name)
    if path is not None:
        return path
    missing(f"{name} is not installed (.ci/run installs it with apt-get)")


def missing(reason: str) -> NoReturn:
    """Skip the test for ``reason`` (something it needs is not installed), or fail it in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so its tests must run", pytrace=False)
    pytest.skip(reason)
