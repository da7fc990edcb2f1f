"""Events from a CSV file, in file order, with every bad row reported by line number."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from stream_lstm.errors import ConfigError, EventError
from stream_lstm.messages.events import (
    DEFAULT_KEY,
    MAX_ABS_VALUE,
    Event,
    parse_number,
    parse_timestamp,
)
from stream_lstm.messages.mapping import FLAT, MessageMapping
from stream_lstm.offline.bad_rows import BadRow, BadRowSummary

_BOOLEAN_CELLS = {"true": 1.0, "false": 0.0, "TRUE": 1.0, "FALSE": 0.0, "True": 1.0, "False": 0.0}


class CsvEventSource:
    """Iterates the events of a CSV file whose first line names the columns.

    The label column holds 0/1 or true/false (empty for an unlabelled event; with
    ``positive_label``, that value is 1 and any other 0); the optional key and timestamp columns
    name the entity and the event time; every other column is a feature (``features`` and
    ``ignore`` choose them): a number, true/false (1/0), or for a ``categorical`` column a
    category; an empty cell is a missing value. Text in another column is no number: the row is
    bad. A bad row (also a wrong number of cells, a bad label or timestamp) is skipped and
    recorded in :attr:`bad_rows` and :attr:`summary` (and passed to ``on_bad_row``), never raised.

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
    features
        Only these columns are features (default: every other column).
    ignore
        Columns that are not read.
    categorical
        Columns whose values are categories (text, or numbers read as names such as zip codes).
    positive_label
        The label value that means 1; any other value means 0.
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
        features: Sequence[str] | None = None,
        ignore: Sequence[str] = (),
        categorical: Sequence[str] = (),
        positive_label: str | None = None,
        on_bad_row: Callable[[BadRow], None] | None = None,
        max_bad_rows_kept: int = 1000,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"no such file: {self.path}")
        self.label = label
        self.key = key
        self.ts = ts
        # Columns are plain names, not paths: the mapping only reads labels and chooses columns.
        self.mapping = MessageMapping(
            key=None,
            ts=None,
            label=None,
            features_field=FLAT,
            features=features,
            ignore=frozenset(ignore),
            categorical=frozenset(categorical),
            positive_label=positive_label,
        )
        self.on_bad_row = on_bad_row
        self.summary = BadRowSummary(max_kept=max_bad_rows_kept)
        with self.path.open(newline="") as handle:
            header = next(csv.reader(handle), None)
        if not header:
            raise ConfigError(f"{self.path} is empty: its first line must name the columns")
        self.columns = [name.strip() for name in header]
        listed = ", ".join(self.columns)
        for role, name in (("label", label), ("key", key), ("ts", ts)):
            if name is not None and name not in self.columns:
                raise ConfigError(f"{role} column {name!r} is not in {self.path}; its columns are: {listed}")
        for option, names in (("features", features or ()), ("ignore", ignore), ("categorical", categorical)):
            missing = [name for name in names if name not in self.columns]
            if missing:
                raise ConfigError(
                    f"--{option} names {', '.join(map(repr, missing))}, not in {self.path}; "
                    f"its columns are: {listed}"
                )
        special = {label, key, ts}
        self.feature_columns = [
            name for name in self.columns if name not in special and self.mapping.reads(name)
        ]

    @property
    def bad_rows(self) -> list[BadRow]:
        """The first bad rows, in file order."""
        return self.summary.kept

    @property
    def skipped(self) -> int:
        """How many rows were skipped."""
        return self.summary.count

    def count_rows(self) -> int:
        """Number of data lines in the file (for progress), counted without parsing."""
        with self.path.open("rb") as handle:
            return max(sum(1 for _ in handle) - 1, 0)

    def __iter__(self) -> Iterator[Event]:
        label_at = self.columns.index(self.label)
        key_at = self.columns.index(self.key) if self.key is not None else None
        ts_at = self.columns.index(self.ts) if self.ts is not None else None
        categorical = self.mapping.categorical
        numeric_at = [
            (name, self.columns.index(name)) for name in self.feature_columns if name not in categorical
        ]
        category_at = [
            (name, self.columns.index(name)) for name in self.feature_columns if name in categorical
        ]
        read_label = self.mapping.read_label
        note_label = self.summary.note_label
        width = len(self.columns)
        with self.path.open(newline="") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            for row in reader:
                if not row:
                    continue  # a blank line is no event
                try:
                    if len(row) != width:
                        raise EventError(f"expected {width} cells, found {len(row)}", "cells")
                    cell = row[label_at]
                    note_label(cell)
                    event = Event(  # by position: Event's fields key, ts, features, label, categories
                        row[key_at] if key_at is not None else DEFAULT_KEY,
                        self._timestamp(row[ts_at]) if ts_at is not None else None,
                        self._features(row, numeric_at),
                        read_label(cell),
                        {name: row[at] for name, at in category_at if row[at]} if category_at else {},
                    )
                except EventError as error:
                    self._record(
                        BadRow(reader.line_num, str(error), error.code, getattr(error, "column", None))
                    )
                    continue
                yield event

    def _timestamp(self, cell: str) -> float | None:
        try:
            return parse_timestamp(cell)
        except EventError as error:
            raise _in_column(error, self.ts, cell) from None

    @staticmethod
    def _features(row: list[str], features_at: list[tuple[str, int]]) -> dict[str, float]:
        """The row's numeric features: finite numbers of at most ``MAX_ABS_VALUE`` in size (or
        true/false as 1/0) by column name; an empty cell is left out."""
        features = {}
        for name, at in features_at:
            cell = row[at]
            if cell != "":
                try:
                    value = float(cell)
                except ValueError:
                    value = _BOOLEAN_CELLS.get(cell.strip())
                    if value is None:
                        raise _text_in_column(name, cell) from None
                if not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:  # NaN, infinite, too large
                    try:
                        parse_number(cell, f"column {name!r}")
                    except EventError as error:
                        raise _in_column(error, name, cell) from None
                features[name] = value
        return features

    def _record(self, bad: BadRow) -> None:
        self.summary.add(bad)
        if self.on_bad_row is not None:
            self.on_bad_row(bad)


class _CellError(EventError):
    """A bad cell: the error says which column, for the hints of :class:`BadRowSummary`."""

    def __init__(self, message: str, code: str, column: str | None) -> None:
        super().__init__(message, code)
        self.column = column


def _text_in_column(name: str, cell: str) -> _CellError:
    shown = repr(cell if len(cell) <= 30 else cell[:27] + "...")
    return _CellError(f"column {name!r} is text ({shown}), not a number", "text", name)


def _in_column(error: EventError, name: str | None, cell: str) -> _CellError:
    return _CellError(str(error), error.code, name)


@dataclass(frozen=True)
class CsvSpec:
    """How to read a CSV file of events, enough for another process to read it again."""

    path: str
    label: str
    key: str | None = None
    ts: str | None = None
    limit: int | None = None
    features: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    positive_label: str | None = None

    def reader(self, on_bad_row: Callable[[BadRow], None] | None = None) -> CsvEventSource:
        """A new reader of the file (``on_bad_row`` as for :class:`CsvEventSource`)."""
        return CsvEventSource(
            self.path,
            label=self.label,
            key=self.key,
            ts=self.ts,
            features=self.features,
            ignore=self.ignore,
            categorical=self.categorical,
            positive_label=self.positive_label,
            on_bad_row=on_bad_row,
        )

    def events(self, source: CsvEventSource | None = None) -> Iterable[Event]:
        """The file's events (the first ``limit`` of them), from ``source`` or a new reader."""
        if source is None:
            source = self.reader()
        return islice(source, self.limit) if self.limit else iter(source)
