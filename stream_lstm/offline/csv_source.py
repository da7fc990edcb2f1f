"""Events from a CSV file, in file order, with every bad row reported by line number."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from stream_lstm.errors import ConfigError, EventError
from stream_lstm.messages.events import (
    DEFAULT_KEY,
    MAX_ABS_VALUE,
    Event,
    parse_label,
    parse_number,
    parse_timestamp,
)


@dataclass(frozen=True)
class BadRow:
    """A row that could not be read: its line number in the file and why."""

    line: int
    reason: str


class CsvEventSource:
    """Iterates the events of a CSV file whose first line names the columns.

    The label column holds 0/1 (empty for an unlabelled event); the optional key and timestamp
    columns name the entity and the event time; every other column is a numeric feature, where an
    empty cell is a missing feature. A row with a wrong number of cells, a non-numeric feature, a
    bad label or a bad timestamp is skipped and recorded in :attr:`bad_rows` (and passed to
    ``on_bad_row``), never raised.

    Parameters
    ----------
    path
        The CSV file.
    label
        Name of the label column.
    key
        Name of the key column; without one, all events form one stream.
    ts
        Name of the timestamp column (seconds, or ISO-8601 times).
    on_bad_row
        Called with each :class:`BadRow` as it is found.
    max_bad_rows_kept
        How many bad rows :attr:`bad_rows` keeps (all are counted in :attr:`skipped`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        label: str,
        key: str | None = None,
        ts: str | None = None,
        on_bad_row: Callable[[BadRow], None] | None = None,
        max_bad_rows_kept: int = 1000,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"no such file: {self.path}")
        self.label = label
        self.key = key
        self.ts = ts
        self.on_bad_row = on_bad_row
        self.max_bad_rows_kept = max_bad_rows_kept
        self.bad_rows: list[BadRow] = []
        self.skipped = 0
        with self.path.open(newline="") as handle:
            header = next(csv.reader(handle), None)
        if not header:
            raise ConfigError(f"{self.path} is empty: its first line must name the columns")
        self.columns = [name.strip() for name in header]
        for role, name in (("label", label), ("key", key), ("ts", ts)):
            if name is not None and name not in self.columns:
                raise ConfigError(
                    f"{role} column {name!r} is not in {self.path}; its columns are: "
                    + ", ".join(self.columns)
                )
        special = {label, key, ts}
        self.feature_columns = [name for name in self.columns if name not in special]

    def count_rows(self) -> int:
        """Number of data lines in the file (for progress), counted without parsing."""
        with self.path.open("rb") as handle:
            return max(sum(1 for _ in handle) - 1, 0)

    def __iter__(self) -> Iterator[Event]:
        label_at = self.columns.index(self.label)
        key_at = self.columns.index(self.key) if self.key is not None else None
        ts_at = self.columns.index(self.ts) if self.ts is not None else None
        features_at = [(name, self.columns.index(name)) for name in self.feature_columns]
        width = len(self.columns)
        with self.path.open(newline="") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            for row in reader:
                if not row:
                    continue  # a blank line is no event
                try:
                    if len(row) != width:
                        raise EventError(f"expected {width} cells, found {len(row)}")
                    features = self._features(row, features_at)
                    event = Event(
                        key=row[key_at] if key_at is not None else DEFAULT_KEY,
                        ts=parse_timestamp(row[ts_at]) if ts_at is not None else None,
                        features=features,
                        label=parse_label(row[label_at]),
                    )
                except EventError as error:
                    self._record(BadRow(reader.line_num, str(error)))
                    continue
                yield event

    @staticmethod
    def _features(row: list[str], features_at: list[tuple[str, int]]) -> dict[str, float]:
        """The row's features: finite numbers of at most ``MAX_ABS_VALUE`` in size by column name; an
        empty cell is left out."""
        features = {}
        for name, at in features_at:
            cell = row[at]
            if cell != "":
                try:
                    value = float(cell)
                except ValueError:
                    value = math.nan
                if not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:  # NaN, infinite, too large, not a number
                    parse_number(cell, f"column {name!r}")  # raises with the reason
                features[name] = value
        return features

    def _record(self, bad: BadRow) -> None:
        self.skipped += 1
        if len(self.bad_rows) < self.max_bad_rows_kept:
            self.bad_rows.append(bad)
        if self.on_bad_row is not None:
            self.on_bad_row(bad)


@dataclass(frozen=True)
class CsvSpec:
    """How to read a CSV file of events, enough for another process to read it again."""

    path: str
    label: str
    key: str | None = None
    ts: str | None = None
    limit: int | None = None

    def reader(self, on_bad_row: Callable[[BadRow], None] | None = None) -> CsvEventSource:
        """A new reader of the file (``on_bad_row`` as for :class:`CsvEventSource`)."""
        return CsvEventSource(self.path, label=self.label, key=self.key, ts=self.ts, on_bad_row=on_bad_row)

    def events(self, source: CsvEventSource | None = None) -> Iterable[Event]:
        """The file's events (the first ``limit`` of them), from ``source`` or a new reader."""
        if source is None:
            source = self.reader()
        return islice(source, self.limit) if self.limit else iter(source)
