from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.series import DataError, load_csv, load_streams


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_iso_timestamps_and_value_column_load_as_one_channel_stream(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "cpu.csv",
        "timestamp,value\n2014-04-01 00:00:00,1.5\n2014-04-01 00:05:00,2\n"
        "2014-04-01T00:10:00Z,-3e1\n",
    )
    stream = load_csv(path)
    assert stream.stream_id == "cpu"
    assert stream.channels == ("value",)
    assert stream.values.shape == (3, 1)
    np.testing.assert_array_equal(stream.values[:, 0], [1.5, 2.0, -30.0])
    np.testing.assert_array_equal(np.diff(stream.timestamps), [300.0, 300.0])
    assert stream.timestamps[0] == 1396310400.0  # naive stamps are UTC
    assert stream.anomaly_mask is None


def test_epoch_second_timestamps_load(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "time,value\n1700000000,1\n1700000060.5,2\n")
    np.testing.assert_array_equal(load_csv(path).timestamps, [1700000000.0, 1700000060.5])


def test_semicolon_delimiter_with_decimal_comma_loads(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "timestamp;temp;pressure\n1;20,5;1013\n2;21,25;1012.5\n")
    stream = load_csv(path)
    assert stream.channels == ("temp", "pressure")
    np.testing.assert_array_equal(stream.values, [[20.5, 1013.0], [21.25, 1012.5]])


def test_columns_pick_channels_in_the_order_given(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "a,timestamp,b,c\n1,1,2,3\n4,2,5,6\n")
    stream = load_csv(path, columns=["c", "a"])
    assert stream.channels == ("c", "a")
    np.testing.assert_array_equal(stream.values, [[3.0, 1.0], [6.0, 4.0]])


def test_a_column_not_in_the_header_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "timestamp,value\n1,1\n")
    with pytest.raises(DataError, match=r"s\.csv:1: columns \['temp'\] not in header"):
        load_csv(path, columns=["temp"])


def test_unparseable_value_names_file_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "timestamp,value\n1,1\n2,2\n3,abc\n")
    with pytest.raises(DataError, match=r"s\.csv:4: column 'value': 'abc' is not a number"):
        load_csv(path)


def test_row_with_a_missing_field_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "timestamp,a,b\n1,1,2\n2,3\n")
    with pytest.raises(DataError, match=r"s\.csv:3: 2 fields, header has 3"):
        load_csv(path)


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-Infinity"])
def test_non_finite_value_is_refused(tmp_path: Path, bad: str) -> None:
    path = _write(tmp_path / "s.csv", f"timestamp,value\n1,1\n2,{bad}\n")
    with pytest.raises(DataError, match=r"s\.csv:3: column 'value' is .*must be finite"):
        load_csv(path)


def test_empty_value_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "timestamp,value\n1,\n")
    with pytest.raises(DataError, match=r"s\.csv:2: column 'value' is empty"):
        load_csv(path)


@pytest.mark.parametrize("second", ["2014-04-01 00:00:00", "2014-03-31 23:55:00"])
def test_non_increasing_timestamp_is_refused(tmp_path: Path, second: str) -> None:
    path = _write(tmp_path / "s.csv", f"timestamp,value\n2014-04-01 00:00:00,1\n{second},2\n")
    with pytest.raises(DataError, match=r"s\.csv:3: timestamp .* is not after the previous"):
        load_csv(path)


def test_unparseable_timestamp_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "timestamp,value\n2014-04-01,1\nyesterday,2\n")
    with pytest.raises(DataError, match=r"s\.csv:3: timestamp 'yesterday' is neither ISO 8601"):
        load_csv(path)


def test_epoch_file_with_an_iso_row_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "timestamp,value\n1700000000,1\n2024-01-01,2\n")
    with pytest.raises(DataError, match=r"s\.csv:3: .* is not epoch seconds like the first"):
        load_csv(path)


def test_header_without_a_timestamp_column_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "when,value\n1,1\n")
    with pytest.raises(DataError, match=r"s\.csv:1: no timestamp column"):
        load_csv(path)


def test_file_without_readings_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"s\.csv:1: no readings"):
        load_csv(_write(tmp_path / "s.csv", "timestamp,value\n"))
    with pytest.raises(DataError, match=r"e\.csv:1: empty file"):
        load_csv(_write(tmp_path / "e.csv", ""))


def test_folder_loads_one_stream_per_file_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    _write(tmp_path / "b" / "x.csv", "timestamp,value\n1,3\n")
    _write(tmp_path / "a.csv", "timestamp,value\n1,1\n2,2\n")
    _write(tmp_path / "notes.txt", "not a stream")
    streams = load_streams(tmp_path)
    assert [s.stream_id for s in streams] == ["a.csv", "b/x.csv"]
    assert [len(s) for s in streams] == [2, 1]


def test_folder_whose_files_disagree_on_channels_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", "timestamp,value\n1,1\n")
    _write(tmp_path / "b.csv", "timestamp,temp\n1,1\n")
    with pytest.raises(DataError, match=r"b\.csv: channels \['temp'\] differ"):
        load_streams(tmp_path)


def test_a_bad_file_in_a_folder_is_named(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", "timestamp,value\n1,1\n")
    _write(tmp_path / "b.csv", "timestamp,value\n1,1\n2,oops\n")
    with pytest.raises(DataError, match=r"b\.csv:3: column 'value'"):
        load_streams(tmp_path)


def test_empty_folder_and_missing_path_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no \\*\\.csv files"):
        load_streams(tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        load_streams(tmp_path / "missing.csv")
