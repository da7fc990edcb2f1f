"""usable_cpus: what `auto` counts before giving work a second process (--parallel, --learner-process)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stream_lstm.learner.cpu_threads import cpu_quota, usable_cpus


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({}, None),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "50000 100000\n"}, 0.5),
        ({"cpu.max": "garbage\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ],
)
def test_cpu_quota_reads_cgroup_v2_then_v1(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    assert cpu_quota(cgroup(tmp_path, files)) == quota


def test_a_container_quota_caps_the_cpus_of_the_affinity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert usable_cpus(cgroup(tmp_path / "none", {})) == 4
    assert usable_cpus(cgroup(tmp_path / "half", {"cpu.max": "50000 100000"})) == 1
    assert usable_cpus(cgroup(tmp_path / "one-and-a-half", {"cpu.max": "150000 100000"})) == 1
    assert usable_cpus(cgroup(tmp_path / "two", {"cpu.max": "200000 100000"})) == 2
    assert usable_cpus(cgroup(tmp_path / "eight", {"cpu.max": "800000 100000"})) == 4
