"""Reading events from CSV: features, keys, timestamps, and bad rows by line number."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_lstm.errors import ConfigError
from stream_lstm.offline.csv_source import CsvEventSource


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "events.csv"
    path.write_text(text)
    return path


def test_reads_features_keys_timestamps_and_missing_cells(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "id,time,x,y,target\n"
        "a,2024-01-01T00:00:00Z,1.5,,1\n"
        "b,1704067260,-2,3e2,0\n"
        "a,2024-01-01T00:02:00+00:00,,,\n",
    )
    events = list(CsvEventSource(path, label="target", key="id", ts="time"))
    assert [e.key for e in events] == ["a", "b", "a"]
    assert [e.ts for e in events] == [1704067200.0, 1704067260.0, 1704067320.0]
    assert [dict(e.features) for e in events] == [{"x": 1.5}, {"x": -2.0, "y": 300.0}, {}]
    assert [e.label for e in events] == [1, 0, None]


def test_bad_rows_are_skipped_counted_and_reported_with_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x,label\n"
        "1,1\n"
        "abc,0\n"  # line 3: not a number
        "2,7\n"  # line 4: bad label
        "3\n"  # line 5: too few cells
        "nan,1\n"  # line 6: not finite
        "\n"  # blank line: no event, not an error
        "4,0\n",
    )
    seen = []
    source = CsvEventSource(path, label="label", on_bad_row=seen.append)
    events = list(source)
    assert [e.features["x"] for e in events] == [1.0, 4.0]
    assert source.skipped == 4
    assert [bad.line for bad in source.bad_rows] == [3, 4, 5, 6]
    assert "column 'x' is text" in source.bad_rows[0].reason
    assert "label must be 0, 1, true, false or empty" in source.bad_rows[1].reason
    assert "expected 2 cells, found 1" in source.bad_rows[2].reason
    assert "finite" in source.bad_rows[3].reason
    assert seen == source.bad_rows


def test_missing_columns_and_files_are_clear_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "x,label\n1,0\n")
    with pytest.raises(ConfigError, match=r"label column 'class' is not in .*columns are: x, label"):
        CsvEventSource(path, label="class")
    with pytest.raises(ConfigError, match="key column"):
        CsvEventSource(path, label="label", key="user")
    with pytest.raises(ConfigError, match="no such file"):
        CsvEventSource(tmp_path / "nope.csv", label="label")
    with pytest.raises(ConfigError, match="empty"):
        CsvEventSource(write(tmp_path, ""), label="label")


def test_every_label_and_timestamp_form_is_read_and_bad_ones_are_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "time,label\n"
        "10,1\n"
        " 11.5 ,1.0\n"
        "1970-01-01T00:00:12Z, 0\n"
        "13,true\n"
        "inf,1\n"  # line 6: not finite
        "nan,1\n"  # line 7: not finite
        "yesterday,1\n"  # line 8: not a time
        "14,2\n"  # line 9: bad label
        ",\n",  # no time, no label: an unlabelled event without a timestamp
    )
    source = CsvEventSource(path, label="label", ts="time")
    events = list(source)
    assert [(e.ts, e.label) for e in events] == [(10.0, 1), (11.5, 1), (12.0, 0), (13.0, 1), (None, None)]
    assert [bad.line for bad in source.bad_rows] == [6, 7, 8, 9]
    assert all("ts must be" in bad.reason for bad in source.bad_rows[:3])
    assert "label must be 0, 1, true, false or empty" in source.bad_rows[3].reason


def test_numbers_past_the_magnitude_limit_are_bad_rows_as_in_messages(tmp_path: Path) -> None:
    """The decoder's limit holds offline too: 1e18 is read, 1e39 and a ts of 1e308 are bad rows."""
    path = write(tmp_path, "x,ts,label\n1e18,1,1\n1e39,2,0\n-1e150,3,1\n1,1e308,0\n-1e18,-1e18,1\n")
    source = CsvEventSource(path, label="label", ts="ts")
    events = list(source)
    assert [e.features["x"] for e in events] == [1e18, -1e18]
    assert [bad.line for bad in source.bad_rows] == [3, 4, 5]
    assert all("out of range" in bad.reason or "at most 1e+18" in bad.reason for bad in source.bad_rows)
