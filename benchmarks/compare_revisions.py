"""Run one benchmark on another git revision and on this tree, alternately, in one run.

Speed is compared as ratios measured side by side: each round runs the benchmark script of the
other revision (checked out in a temporary worktree, its package first on the path) and then
this tree's, so both see the same machine at the same time. Each run's markdown table is
printed under its round and side, for RESULTS.md.

    .venv/bin/python benchmarks/compare_revisions.py --base REV --rounds 2 -- \\
        bench_learner.py --keys 1000 --batch-sizes 64

The scripts of both sides must accept ``--markdown FILE`` (every benchmark here does).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import describe_machine

HERE = Path(__file__).resolve().parent.parent


def run_side(tree: Path, script: str, arguments: list[str]) -> str:
    """The markdown table the benchmark ``script`` of ``tree`` writes, run with that tree's package."""
    with tempfile.TemporaryDirectory() as scratch:
        table = Path(scratch) / "table.md"
        environment = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run(
            [sys.executable, str(tree / "benchmarks" / script), *arguments, "--markdown", str(table)],
            cwd=tree,
            env=environment,
            stdout=sys.stderr,  # the script's progress; the table is what this prints
            check=True,
        )
        return table.read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the git revision to compare this tree with")
    parser.add_argument("--rounds", type=int, default=2, help="base-then-this rounds")
    parser.add_argument("script", help="the benchmark script's file name, in benchmarks/")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the script's own arguments")
    options = parser.parse_args(argv)
    arguments = [a for a in options.arguments if a != "--"]
    # Beside this checkout, so that a benchmark finds the data beside it as from here (Elec2 is
    # ../shared/data relative to a checkout).
    with tempfile.TemporaryDirectory(dir=HERE.parent, prefix=".compare-") as base_directory:
        base = Path(base_directory)
        subprocess.run(["git", "worktree", "add", "--detach", str(base), options.base], cwd=HERE, check=True)
        try:
            print(f"# {options.script} {' '.join(arguments)}: {options.base} against this tree\n")
            print(describe_machine() + "\n")
            for round_number in range(1, options.rounds + 1):
                for side, tree in (("base " + options.base, base), ("this tree", HERE)):
                    table = run_side(tree, options.script, arguments)
                    print(f"## round {round_number}, {side}\n\n{table}\n", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=HERE, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
