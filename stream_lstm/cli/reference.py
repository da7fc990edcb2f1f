"""The reference tables of docs/reference/, rendered from the code's own declarations.

``settings.md`` comes from the command line (:func:`stream_lstm.cli.main.build_parser`) and the
settings declared in :mod:`stream_lstm.config.declared`; ``metrics.md`` from
:data:`stream_lstm.telemetry.metrics.METRICS`. A test fails when the committed files differ from
what this module renders. Regenerate them with::

    python -m stream_lstm.cli.reference --write

Without ``--write`` it only checks, and exits with 1 when a file is out of date.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from stream_lstm.cli.main import build_parser
from stream_lstm.config.setting import Setting
from stream_lstm.telemetry.metrics import METRICS, Label, MetricDeclaration

#: Where the rendered files live in the repository.
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "docs" / "reference"
REGENERATE = "python -m stream_lstm.cli.reference --write"


def _header(title: str, source: str, intro: Sequence[str]) -> list[str]:
    """The title, the line that says how the file is made, and the paragraph under them."""
    return [
        f"# {title}",
        "",
        f"_Generated from {source} by `{REGENERATE}`; do not edit by hand._",
        "",
        *intro,
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return lines


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """Each subcommand's name, one-line help and parser, in the order of ``--help``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return [(name, helps[name], sub) for name, sub in action.choices.items()]
    return []


def _argument(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    flag = action.option_strings[-1]
    return f"`{flag} {action.metavar}`" if action.metavar else f"`{flag}`"


def render_settings() -> str:
    """docs/reference/settings.md: per command, its arguments and its settings."""
    sources = "stream_lstm/config/declared.py and stream_lstm/cli/"
    intro = [
        "Each setting is read, in this order, from its flag, its `STREAM_LSTM_*` environment variable,",
        "the TOML file given by `--config FILE.toml` (or `STREAM_LSTM_CONFIG`: flat `key = value` pairs,",
        "`-` or `_` in keys alike), and else takes its default. A boolean flag given bare means true.",
        "Arguments are read from the command line only (but `STREAM_LSTM_CONFIG` may name the",
        "`--config` file).",
    ]
    lines = _header("Settings reference", sources, intro)
    for name, summary, sub in _subcommands(build_parser()):
        settings: Sequence[Setting] = sub.get_default("settings")
        by_name = {setting.name: setting for setting in settings}
        by_name |= {setting.file_name: setting for setting in settings if setting.secret}
        arguments = [
            action
            for action in sub._actions
            if action.dest not in by_name and not isinstance(action, argparse._HelpAction)
        ]
        lines += ["", f"## stream-lstm {name}", "", summary[:1].upper() + summary[1:] + "."]
        if arguments:
            lines += ["", "Arguments:", ""]
            lines += _table(["Argument", "Help"], ([_argument(a), a.help or ""] for a in arguments))
        if settings:
            lines += ["", "Settings:", ""]
            lines += _table(
                ["Flag", "Environment", "TOML key", "Default", "Help"],
                ([*_names(s), f"`{s.shown_default}`", _help(s)] for s in settings),
            )
    return "\n".join(lines) + "\n"


def _labels(labels: Sequence[Label]) -> str:
    described = []
    for label in labels:
        values = ", ".join(f"`{value}`" for value in label.values) or label.meaning
        at_zero = " (each exported at 0 from the start)" if label.exported_at_zero else ""
        described.append(f"`{label.name}`: {values}{at_zero}")
    return "<br>".join(described) or "none"


def _kind(declaration: MetricDeclaration) -> str:
    kind = declaration.kind.__name__.lower()
    if declaration.buckets is not None:
        buckets = ", ".join(f"{bucket:g}" for bucket in declaration.buckets)
        return f"{kind} (`_bucket`, `_sum`, `_count`; buckets {buckets})"
    if kind == "info":
        return f"info (served as `{declaration.name}_info`)"
    return kind


def render_metrics() -> str:
    """docs/reference/metrics.md: every metric with its type, labels and help."""
    intro = [
        "`stream-lstm run` serves these at `/metrics` on `--metrics-host`:`--metrics-port`.",
        "Counters are also served with a `_created` series, as prometheus_client does.",
        "",
    ]
    lines = _header("Metrics reference", "stream_lstm/telemetry/metrics.py", intro)
    lines += _table(
        ["Metric", "Type", "Labels", "Help"],
        ([f"`{d.name}`", _kind(d), _labels(d.labels), d.help] for d in METRICS),
    )
    return "\n".join(lines) + "\n"


#: Each reference file and the function that renders it.
REFERENCE_FILES: dict[str, Callable[[], str]] = {
    "settings.md": render_settings,
    "metrics.md": render_metrics,
}


def stale_files(directory: Path = REFERENCE_DIR) -> list[Path]:
    """The reference files whose committed text differs from what the code renders."""
    return [
        directory / name
        for name, render in REFERENCE_FILES.items()
        if not (directory / name).is_file() or (directory / name).read_text() != render()
    ]


def _names(setting: Setting) -> list[str]:
    """Flag, environment variable and TOML key; a secret's ``-file`` forms too."""
    names = [f"`{setting.flag}`", f"`{setting.env}`", f"`{setting.name}`"]
    if setting.secret:
        forms = (f"{setting.flag}-file", f"{setting.env}_FILE", setting.file_name)
        names = [f"{name}<br>`{form}`" for name, form in zip(names, forms, strict=True)]
    return names


def _help(setting: Setting) -> str:
    if setting.secret:
        return f"{setting.help} (a secret: never shown; the -file forms read it from a file)"
    if setting.repeated:
        return f"{setting.help} (repeatable; in the environment one per line, in TOML a list)"
    return setting.help


def main(argv: Sequence[str] | None = None) -> int:
    """Check the reference files, or rewrite them with ``--write``."""
    parser = argparse.ArgumentParser(prog="python -m stream_lstm.cli.reference", description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the files instead of checking them")
    parser.add_argument("--dir", type=Path, default=REFERENCE_DIR, help="the docs/reference folder")
    args = parser.parse_args(argv)
    if args.write:
        args.dir.mkdir(parents=True, exist_ok=True)
        for name, render in REFERENCE_FILES.items():
            (args.dir / name).write_text(render())
            print(f"wrote {args.dir / name}")
        return 0
    stale = stale_files(args.dir)
    for path in stale:
        print(f"{path} is out of date: run `{REGENERATE}`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
