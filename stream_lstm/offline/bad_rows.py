"""Bad rows of a CSV file: each one's line and reason, and what they add up to, with what to do.

A file whose rows are mostly bad is nearly always read with the wrong options: the key column
taken for a feature, labels that are ``yes``/``no``, a class column with four values. One bad row
says little; the summary of all of them says which option to pass (:meth:`BadRowSummary.hints`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: Distinct label values remembered for the hint about labels.
MAX_LABEL_VALUES = 20


@dataclass(frozen=True)
class BadRow:
    """A row that could not be read: its line number in the file, why, and the reason's code
    (``text``, ``bad_label``, ``bad_ts``, ``cells``, ...) and column where one is known."""

    line: int
    reason: str
    code: str = "invalid"
    column: str | None = None


@dataclass
class BadRowSummary:
    """Every bad row counted, the first ``max_kept`` kept, and what they have in common."""

    max_kept: int = 1000
    kept: list[BadRow] = field(default_factory=list)
    count: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    #: Columns that held text where a number belongs: their first text and how many rows.
    text_columns: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: The label column's distinct values, good ones too (up to MAX_LABEL_VALUES).
    label_values: set[str] = field(default_factory=set)

    def add(self, bad: BadRow) -> None:
        """Count ``bad`` and keep it while there is room."""
        self.count += 1
        self.codes[bad.code] += 1
        if len(self.kept) < self.max_kept:
            self.kept.append(bad)
        if bad.code == "text" and bad.column is not None:
            first, rows = self.text_columns.get(bad.column, (bad.reason, 0))
            self.text_columns[bad.column] = (first, rows + 1)

    def note_label(self, cell: str) -> None:
        """Remember a label cell's value (a few distinct ones suffice for the hint)."""
        values = self.label_values
        if len(values) < MAX_LABEL_VALUES:
            values.add(cell.strip())

    def hints(self, *, positive_label: str | None, ts: str | None) -> list[str]:
        """What to pass to read the file, one line per problem, most frequent first."""
        hints = []
        for column, (_, rows) in sorted(self.text_columns.items(), key=lambda item: -item[1][1]):
            hints.append(
                f"column {column!r} is text ({rows:,} rows): pass --key {column} if it names the entity, "
                f"--categorical {column} if it is a category, or --ignore {column}"
            )
        if self.codes["bad_label"]:
            values = ", ".join(sorted(value or "(empty)" for value in self.label_values))
            more = " ..." if len(self.label_values) >= MAX_LABEL_VALUES else ""
            if positive_label is None:
                hints.append(
                    f"labels are {{{values}{more}}}, not 0/1 or true/false: pass --positive-label VALUE "
                    "(the value that means 1; every other value means 0)"
                )
            else:
                hints.append(f"labels are {{{values}{more}}}: some are not text or numbers")
        if self.codes["bad_ts"] and ts is not None:
            hints.append(f"column {ts!r} holds values that are not times: seconds or ISO-8601 times are read")
        if self.codes["cells"]:
            hints.append(
                "rows have another number of cells than the header has columns: check the delimiter "
                "(a comma) and the quoting"
            )
        return hints
