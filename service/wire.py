"""A batch's results as JSON text, written straight from the rounds' result arrays.

A batch's results are most of its reply. One dict per result for a JSON encoder (a dict, a
forecast dict and five floats a reading, freed again after the send) cost about a third of the
server's CPU at 500 readings a WebSocket frame. Here orjson encodes each field of a block's
rows as one array, numbers straight from the arrays, and each array's text is cut into its
elements and interleaved with the fixed text between them by C-level iteration, with no Python
code per reading. The bytes are those `orjson.dumps` writes of `dataplane.render` and
`render_columns` (tests/test_wire.py holds them equal).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain, repeat
from typing import Any

import numpy as np
import orjson

from service.results import ANOMALY, GAP, SCORED, WARMING, ResultBlock, ResultRuns
from service.schemas import RESULT_FIELDS, iso_many


class _Array:
    """A JSON array's text, whose elements are cut out only if a row needs its own."""

    __slots__ = ("inner", "separator", "values")

    def __init__(self, encoded: bytes, separator: bytes = b",", values: Any = None) -> None:
        self.inner = encoded[1:-1]  # without the brackets
        self.separator = separator  # between the elements' texts
        self.values = values  # to encode one by one if some element holds a separator

    def elements(self) -> list[bytes]:
        texts = self.inner.split(self.separator)
        if self.values is not None and len(texts) != len(self.values):
            return list(map(orjson.dumps, self.values))
        return texts


Text = bytes | list[bytes] | _Array  # a field's JSON text: the same for every row, or per row
Segment = dict[str, list[Text]]  # some rows' texts, per field: its parts, to be concatenated

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_BOOLEANS = (b"false", b"true")


def segments(results: ResultRuns) -> list[tuple[int, Segment]] | None:
    """Each run's rows as text (with how many rows), in order; None if some reading of them
    was refused (`dataplane.render` words its error)."""
    out = []
    for block, row, start, stop in results.runs:
        end = row + stop - start
        if any(row <= j < end for j in block.errors):
            return None
        if end > row:
            out.append((end - row, _segment(block, row, end)))
    return out


def rows(segments: Sequence[tuple[int, Segment]], head: dict[str, Any] | None = None) -> bytes:
    """`{**head, "results": [...]}`: one object per row."""
    pieces = [_open(head) + b'"results":[']
    for n, segment in segments:
        pieces += _interleaved(n, [b",{", *chain.from_iterable(
            (b"," if k else b"", _KEYS[key], *segment[key]) for k, key in enumerate(RESULT_FIELDS)
        ), b"}"])
    if len(pieces) > 1:
        pieces[1] = pieces[1][1:]  # the comma before the first row
    pieces.append(b"]}")
    return b"".join(pieces)


def columns(segments: Sequence[tuple[int, Segment]], head: dict[str, Any] | None = None
            ) -> bytes:
    """`{**head, "columns": {...}}`: one array per field."""
    pieces = [_open(head) + b'"columns":{']
    for k, key in enumerate(RESULT_FIELDS):
        texts = b",".join(_column(n, segment[key]) for n, segment in segments)
        pieces += (b"," if k else b"", _KEYS[key], b"[", texts, b"]")
    pieces.append(b"}}")
    return b"".join(pieces)


_KEYS = {key: orjson.dumps(key) + b":" for key in RESULT_FIELDS}


def _open(head: dict[str, Any] | None) -> bytes:
    return orjson.dumps(head)[:-1] + b"," if head else b"{"


def _interleaved(n: int, parts: list[Text]) -> list[bytes]:
    """Row after row of n, each row's text of each of `parts` in turn."""
    merged: list[Text] = []  # each run of fixed texts joined into one
    for part in parts:
        if type(part) is bytes and merged and type(merged[-1]) is bytes:
            merged[-1] += part
        else:
            merged.append(part)
    return list(chain.from_iterable(zip(*(_each_row(n, part) for part in merged), strict=True)))


def _each_row(n: int, part: Text) -> Iterable[bytes]:
    """A part's text for each of n rows."""
    if isinstance(part, bytes):
        return repeat(part, n)
    return part.elements() if isinstance(part, _Array) else part


def _column(n: int, parts: list[Text]) -> bytes:
    """The text of n rows' elements of a field's array, without its brackets."""
    if len(parts) > 1:
        pieces = _interleaved(n, [b",", *parts])
        pieces[0] = pieces[0][1:]
        return b"".join(pieces)
    (part,) = parts
    return part.inner if isinstance(part, _Array) else b",".join(_each_row(n, part))


def _segment(block: ResultBlock, lo: int, hi: int) -> Segment:
    """Rows [lo, hi) of a `ResultBlock` as text, per field."""
    n = hi - lo
    records = block.results[lo:hi]
    flags = records["last_flags"]
    alerts: Text = b"null"
    if any(lo <= j < hi for j in block.alerts):
        alerts = [b"null"] * n
        for j, ref in block.alerts.items():
            if lo <= j < hi:
                alerts[j - lo] = orjson.dumps(ref.to_json())
    return {
        "stream_id": [_strings(block.stream_ids[lo:hi])],
        "timestamp": [_timestamps(block.timestamps[lo:hi])],
        "status": [b'"ok"'],
        "model": [orjson.dumps(block.model)],
        "forecast": _forecasts(records, (flags & SCORED) != 0),
        "score": [_numbers(records["last_score"])],
        "threshold": [_numbers(records["threshold"])],
        "anomaly": [_flags((flags & ANOMALY) != 0)],
        "warming_up": [_flags((flags & WARMING) != 0)],
        "gap": [_flags((flags & GAP) != 0)],
        "duplicate": [_flags(block.duplicate[lo:hi])],
        "alert": [alerts],
    }


def _strings(values: list[str]) -> _Array:
    return _Array(orjson.dumps(values), b",", values)


def _timestamps(times: np.ndarray) -> Text:
    """Each time as ISO 8601 text; a batch is mostly one time step, or a few."""
    if (times == times[0]).all():
        return orjson.dumps(iso_many(times[:1].tolist())[0])
    seconds = times.tolist()
    distinct = set(seconds)
    if len(distinct) <= len(seconds) // 4:
        firsts = list(distinct)
        texts = dict(zip(firsts, map(orjson.dumps, iso_many(firsts)), strict=True))
        return list(map(texts.__getitem__, seconds))
    return _strings(iso_many(seconds))


def _numbers(column: np.ndarray) -> Text:
    """Floats as JSON numbers, as orjson writes Python's floats (NaN as null)."""
    array = np.ascontiguousarray(column)
    if (array == array[0]).all():  # a model's threshold, mostly
        return orjson.dumps(float(array[0]))
    return _Array(orjson.dumps(array, option=_NUMPY))  # numbers hold no comma


def _forecasts(records: np.ndarray, scored: np.ndarray) -> list[Text]:
    """`{"loc": [...], "scale": [...]}` of each row's forecast; null if it was not scored."""
    if not scored.any():
        return [b"null"]
    parts: list[Text] = [b'{"loc":[', _vectors(records["last_loc"]), b'],"scale":[',
                         _vectors(records["last_scale"]), b"]}"]
    if scored.all():
        return parts
    n = len(scored)
    texts = list(map(b"".join, zip(*(_each_row(n, part) for part in parts), strict=True)))
    for j in np.flatnonzero(~scored).tolist():
        texts[j] = b"null"
    return [texts]


def _vectors(column: np.ndarray) -> _Array:
    """Each row of a (rows, channels) float array as the inside of a JSON array."""
    if column.shape[1] == 1:  # one channel: a flat array is encoded in half the time
        return _Array(orjson.dumps(np.ascontiguousarray(column[:, 0]), option=_NUMPY))
    encoded = orjson.dumps(np.ascontiguousarray(column), option=_NUMPY)  # [[a,b],[c,d]]
    return _Array(encoded[1:-1], b"],[")  # numbers hold no bracket


def _flags(has: np.ndarray) -> Text:
    if not has.any():
        return b"false"
    if has.all():
        return b"true"
    return list(map(_BOOLEANS.__getitem__, has.tolist()))
