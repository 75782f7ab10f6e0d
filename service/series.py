"""Streams from disk: one CSV is one stream, a folder of CSVs is many, validated line by line.

Here, not in `training`, because the server's offline replay reads the same files.

A file has a header row, a timestamp column (ISO 8601 or epoch seconds) and one or more
numeric channel columns, comma or semicolon delimited. Every problem is a `DataError` that
names the file and the line, so a bad row in a 20,000-line file is found in one look.

>>> streams = load_streams(Path("data/nab"), columns=["value"])  # doctest: +SKIP
>>> streams[0].values.shape  # (time, channels)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

TIMESTAMP_COLUMNS = ("timestamp", "time", "ts", "datetime", "date")


class DataError(ValueError):
    """A stream file cannot be used; the message names the file and, where known, the line."""

    def __init__(self, path: Path, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


@dataclass(frozen=True)
class Anomaly:
    """One labeled anomaly: readings `start` (inclusive) to `end` (exclusive)."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True, eq=False)
class Stream:
    """One stream's readings in time order, and its anomaly labels when they are known."""

    stream_id: str
    timestamps: np.ndarray  # (time,) float64 epoch seconds, strictly increasing
    values: np.ndarray  # (time, channels) float64
    channels: tuple[str, ...]
    anomaly_mask: np.ndarray | None = None  # (time,) bool, True inside a labeled anomaly
    anomalies: tuple[Anomaly, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.values.shape[0])


def load_streams(path: Path, columns: Sequence[str] | None = None) -> list[Stream]:
    """Load a CSV file (one stream) or every `*.csv` under a folder (one stream per file).

    Files in a folder are taken in sorted order, searching subfolders too, and must all
    have the same channels.
    """
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.csv") if p.is_file())
        if not files:
            raise DataError(path, "folder holds no *.csv files")
        streams = [load_csv(f, columns, stream_id=str(f.relative_to(path))) for f in files]
        first = streams[0]
        for f, stream in zip(files, streams, strict=True):
            if stream.channels != first.channels:
                raise DataError(
                    f,
                    f"channels {list(stream.channels)} differ from {list(first.channels)} "
                    f"in {files[0]}; pick common ones with --columns",
                )
        return streams
    if not path.exists():
        raise DataError(path, "no such file or folder")
    return [load_csv(path, columns)]


def load_csv(
    path: Path, columns: Sequence[str] | None = None, stream_id: str | None = None
) -> Stream:
    """Load one stream from a CSV file with a header row; see the module docstring."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets write a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read: {exc}") from exc
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(path, "empty file (expected a header row)", line=1)
    delimiter = _delimiter(lines[0])
    reader = csv.reader(lines, delimiter=delimiter)
    header = [name.strip() for name in next(reader)]
    time_col = _timestamp_column(path, header)
    channel_cols = _channel_columns(path, header, time_col, columns)

    timestamps: list[float] = []
    rows: list[list[float]] = []
    epoch_mode: bool | None = None
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue  # blank lines, e.g. a trailing newline pair, carry no reading
        if len(row) != len(header):
            raise DataError(path, f"{len(row)} fields, header has {len(header)}", line)
        stamp = row[time_col].strip()
        if epoch_mode is None:
            epoch_mode = _is_number(stamp)
        ts = _parse_timestamp(path, line, stamp, epoch_mode)
        if timestamps and ts <= timestamps[-1]:
            raise DataError(
                path,
                f"timestamp {stamp!r} is not after the previous reading's; "
                "readings must be in strictly increasing time order",
                line,
            )
        timestamps.append(ts)
        rows.append(
            [_parse_value(path, line, header[c], row[c], delimiter) for c in channel_cols]
        )
    if not rows:
        raise DataError(path, "no readings after the header", line=1)
    return Stream(
        stream_id=stream_id if stream_id is not None else path.stem,
        timestamps=np.asarray(timestamps, dtype=np.float64),
        values=np.asarray(rows, dtype=np.float64).reshape(len(rows), len(channel_cols)),
        channels=tuple(header[c] for c in channel_cols),
    )


def _delimiter(header_line: str) -> str:
    # The header decides: semicolon files come from locales where the comma is a decimal mark.
    return ";" if header_line.count(";") > header_line.count(",") else ","


def _timestamp_column(path: Path, header: list[str]) -> int:
    lowered = [name.lower() for name in header]
    for candidate in TIMESTAMP_COLUMNS:
        if candidate in lowered:
            return lowered.index(candidate)
    raise DataError(
        path, f"no timestamp column in header {header}; expected one of {TIMESTAMP_COLUMNS}", 1
    )


def _channel_columns(
    path: Path, header: list[str], time_col: int, columns: Sequence[str] | None
) -> list[int]:
    if columns is None:
        picked = [i for i in range(len(header)) if i != time_col]
        if not picked:
            raise DataError(path, "header has a timestamp column but no channel column", 1)
        return picked
    missing = [name for name in columns if name not in header]
    if missing:
        raise DataError(path, f"columns {missing} not in header {header}", 1)
    if len(set(columns)) != len(columns):
        raise DataError(path, f"columns {list(columns)} name a column twice")
    if header[time_col] in columns:
        raise DataError(path, f"{header[time_col]!r} is the timestamp column, not a channel")
    return [header.index(name) for name in columns]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_timestamp(path: Path, line: int, text: str, epoch_mode: bool) -> float:
    if epoch_mode:
        try:
            ts = float(text)
        except ValueError:
            raise DataError(
                path, f"timestamp {text!r} is not epoch seconds like the first row's", line
            ) from None
        if not math.isfinite(ts):
            raise DataError(path, f"timestamp {text!r} is not finite", line)
        return ts
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(
            path, f"timestamp {text!r} is neither ISO 8601 nor epoch seconds", line
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # naive stamps are read as UTC, as the server does
    return moment.timestamp()


def _parse_value(path: Path, line: int, column: str, text: str, delimiter: str) -> float:
    cell = text.strip()
    if not cell:
        raise DataError(path, f"column {column!r} is empty", line)
    try:
        value = float(cell)
    except ValueError:
        parsed = _decimal_comma(cell) if delimiter == ";" else None
        if parsed is None:
            raise DataError(path, f"column {column!r}: {cell!r} is not a number", line) from None
        value = parsed
    if not math.isfinite(value):
        raise DataError(path, f"column {column!r} is {cell!r}; readings must be finite", line)
    return value


def _decimal_comma(cell: str) -> float | None:
    try:
        return float(cell.replace(",", "."))
    except ValueError:
        return None
