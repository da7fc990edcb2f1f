"""The machine a benchmark ran on, in one line for the head of its tables, and how its tables are
appended to benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_machine() -> str:
    """CPU, cores, memory, Python, torch and GPU (if any) in one line."""
    parts = [f"{cpu_model()}, {os.cpu_count()} cores"]
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        parts.append(f"{pages * page_size / 2**30:.0f} GiB")
    except (ValueError, OSError, AttributeError):
        pass
    parts.append(f"Python {platform.python_version()}")
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        parts.append(f"torch {torch.__version__} ({gpu})")
    except ImportError:
        parts.append("no torch")
    return "; ".join(parts)


def append_results(path: str | os.PathLike[str], title: str, machine: str, sections: list[str]) -> None:
    """Append ``sections`` (plain-text tables) to the Markdown file ``path``: a ``# title``
    heading, the machine's line, then each section in a code block."""
    body = "\n\n".join(f"```\n{section}\n```" for section in sections)
    with open(path, "a") as handle:
        handle.write(f"\n# {title}\n\n{machine}\n\n{body}\n")
    print(f"appended to {path}")
