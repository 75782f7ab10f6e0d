"""Request bodies -> the engine's readings: one `Reading`, or one `Failed` saying why, each.

A batch whose readings are all plainly well formed is checked a field at a time over the
whole batch; any other is parsed one reading at a time, so one malformed reading becomes one
error result and the rest go on. Either way the outcome is what the wire models
(`service.schemas`) would make of each reading.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import numpy as np
import orjson
from pydantic import TypeAdapter, ValidationError

from service.alerts import iso
from service.errors import InvalidReadingError, LimitExceededError, StreamwatchError
from service.results import Reading, ReadingArrays, new_reading
from service.schemas import STREAM_ID_PATTERN, ReadingIn, StreamReadingIn, Timestamp, problem
from service.settings import LimitSettings

_STREAM_ID = re.compile(STREAM_ID_PATTERN)

_reading = TypeAdapter(ReadingIn)
_stream_reading = TypeAdapter(StreamReadingIn)


def decode_json(body: bytes) -> Any:
    """Parse a JSON body; NaN/Infinity literals are let through to be refused per reading."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            return json.loads(body)
        except ValueError as exc:
            raise InvalidReadingError(f"the body is not JSON: {exc}") from None


def parse_timestamp(value: Timestamp) -> float:
    if isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise InvalidReadingError(
                    f"timestamp {value!r} is neither ISO 8601 nor epoch seconds"
                ) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            try:
                seconds = parsed.timestamp()
            except (OverflowError, ValueError):  # year 1 in a zone east of UTC
                seconds = math.nan
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise InvalidReadingError(f"timestamp {value!r} is not a finite time")
    if not _FIRST_SECOND <= seconds <= _LAST_SECOND:  # results are written back in ISO 8601
        raise InvalidReadingError(f"timestamp {value!r} is outside the years 1 to 9999")
    return seconds


_FIRST_SECOND, _LAST_SECOND = -62135596800.0, 253402300799.0  # 0001-01-01, 9999-12-31T23:59:59


def to_reading(item: ReadingIn, stream_id: str, limits: LimitSettings) -> Reading:
    """Check one wire reading and turn it into the engine's record."""
    check_stream_id(stream_id, limits)
    if (item.values is None) == (item.value is None):
        raise InvalidReadingError("give exactly one of `values` (a list) or `value`")
    raw = item.values if item.values is not None else [item.value]
    if not raw:
        raise InvalidReadingError("`values` is empty")
    if len(raw) > limits.max_channels:
        raise LimitExceededError(f"{len(raw)} channels; at most {limits.max_channels}")
    values = tuple(math.nan if v is None else v for v in raw)
    for i, v in enumerate(raw):
        if v is not None and not math.isfinite(v):
            raise InvalidReadingError(
                f"channel {i} is {v}: NaN and infinities are refused (use null for missing)"
            )
    return Reading(stream_id, parse_timestamp(item.timestamp), values, item.model)


def check_stream_id(stream_id: str, limits: LimitSettings) -> None:
    if len(stream_id) > limits.max_stream_id_length:
        raise LimitExceededError(
            f"stream_id is {len(stream_id)} characters; at most {limits.max_stream_id_length}"
        )
    if not _STREAM_ID.fullmatch(stream_id):  # match() would let a trailing newline through
        raise InvalidReadingError(f"stream_id {stream_id!r} must match {STREAM_ID_PATTERN}")


@dataclass(frozen=True, slots=True)
class Failed:
    """A reading that was refused, with what it said of itself for the results."""

    stream_id: Any
    timestamp: Any
    error: StreamwatchError


Parsed = Reading | Failed
Batch = ReadingArrays | list[Parsed]  # a parsed request: as columns, or one entry per item


def parse_items(items: list[Any], limits: LimitSettings, stream_id: str | None = None) -> Batch:
    """Each item to a Reading, or to a Failed that says why; as columns when all are plainly
    well formed (`as_parsed` gives them one by one)."""
    _check_count(len(items), limits)
    uniform = _uniform(items, stream_id, limits)
    if uniform is not None:
        return uniform
    parsed: list[Parsed] = []
    for raw in items:
        reading = _well_formed(raw, stream_id, limits)
        parsed.append(reading if reading is not None else _validated(raw, stream_id, limits))
    return parsed


def _check_count(n: int, limits: LimitSettings) -> None:
    if n > limits.max_readings_per_request:
        raise LimitExceededError(
            f"{n} readings in one request; at most {limits.max_readings_per_request}"
        )


def is_columns(body: Any) -> bool:
    """Whether a body is a batch sent as columns: `{"columns": {...}}`."""
    return isinstance(body, dict) and "columns" in body


def parse_columns(
    body: dict[str, Any], limits: LimitSettings, stream_id: str | None = None
) -> Batch:
    """A batch sent as columns, `{"columns": {"stream_id": [...], "timestamp": [...],
    "value": [...]}}`: reading i is entry i of every column. The same readings as the items
    it stands for: as columns when all are plainly well formed, else each a Reading or a
    Failed. The body as a whole is refused only if it is not columns."""
    extra = sorted(body.keys() - {"columns"})
    if extra:
        raise InvalidReadingError(f'a batch of columns is {{"columns": {{...}}}}; not {extra}')
    columns = body["columns"]
    if not isinstance(columns, dict) or not columns:
        raise InvalidReadingError("`columns` must be an object of equally long lists")
    allowed = _KEYS if stream_id is None else _KEYS - {"stream_id"}
    unknown = sorted(columns.keys() - allowed)
    if unknown:
        raise InvalidReadingError(
            f"unknown column(s) {', '.join(unknown)}; columns are {', '.join(sorted(allowed))}"
        )
    if not all(type(column) is list for column in columns.values()):
        raise InvalidReadingError("each column must be a list, one entry per reading")
    lengths = {key: len(column) for key, column in columns.items()}
    if len(set(lengths.values())) != 1:
        raise InvalidReadingError(f"the columns must be equally long; they are {lengths}")
    n = next(iter(lengths.values()))
    _check_count(n, limits)
    if n >= _UNIFORM_MIN and (fast := _uniform_columns(columns, stream_id, limits)) is not None:
        return fast
    keys = list(columns)  # some reading is not plainly well formed: as items, each judged
    items = [dict(zip(keys, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    return parse_items(items, limits, stream_id)


def _uniform(
    items: list[Any], stream_id: str | None, limits: LimitSettings
) -> ReadingArrays | None:
    """The batch fast path for items: all of one shape (dicts with the same keys), then
    checked a column at a time by `_uniform_columns`; None sends the batch item by item."""
    if len(items) < _UNIFORM_MIN or type(items[0]) is not dict:
        return None
    keys = items[0].keys()
    try:  # with the lengths equal, the lookups prove every item a dict of the same keys
        if set(map(len, items)) != {len(keys)}:
            return None
        columns = {key: list(map(operator.itemgetter(key), items)) for key in keys}
    except (KeyError, TypeError):
        return None
    return _uniform_columns(columns, stream_id, limits)


def _uniform_columns(
    columns: dict[str, list[Any]], stream_id: str | None, limits: LimitSettings
) -> ReadingArrays | None:
    """The batch fast path: readings all plainly well formed, checked a field at a time over
    the whole batch (types by set, numbers by numpy, ids by one regex).

    Accepts only what `_well_formed` accepts item by item, and gives the same Readings; on
    anything else it returns None and the batch goes item by item, which words each error.
    """
    keys = columns.keys()
    if not _KEYS.issuperset(keys) or ("value" in keys) == ("values" in keys):
        return None
    if "timestamp" not in keys:  # each reading lacks one: judged one by one, so each says so
        return None
    if (stream_id is None) != ("stream_id" in keys):
        return None
    try:
        if stream_id is None:
            stream_ids = _stream_ids(columns["stream_id"], limits)
        else:
            check_stream_id(stream_id, limits)
            stream_ids = [stream_id] * len(columns["timestamp"])
        seconds = _seconds(columns["timestamp"])
        if "value" in keys:
            values = _one_channel(columns["value"])
        else:
            values = _channels(columns["values"], limits)
        models = None
        if "model" in keys:
            models = columns["model"]
            if not _TYPES_OF_MODEL.issuperset(map(type, models)):
                return None
    except (_NotUniform, StreamwatchError, TypeError, ValueError, OverflowError):
        return None
    return ReadingArrays(stream_ids, seconds, values, models)


def as_parsed(batch: Batch) -> list[Parsed]:
    """A parsed batch one reading at a time."""
    return list(batch.readings()) if isinstance(batch, ReadingArrays) else batch


_UNIFORM_MIN = 8  # below it, the numpy calls cost more than the per-item path
_TYPES_OF_MODEL = frozenset({str, type(None)})
_NUMBER_TYPES = frozenset({int, float})
_CHANNEL_TYPES = frozenset({int, float, type(None)})


class _NotUniform(Exception):
    """This batch is not for the fast path."""


def _stream_ids(stream_ids: list[Any], limits: LimitSettings) -> list[str]:
    # One regex call over the ids joined (joining raises TypeError unless all are strings),
    # which also bounds their lengths; an id with a newline of its own is out.
    joined = "\n".join(stream_ids)
    pattern = _stream_ids_pattern(min(limits.max_stream_id_length, _MAX_STREAM_ID))
    if joined.count("\n") != len(stream_ids) - 1 or pattern.fullmatch(joined) is None:
        raise _NotUniform
    return stream_ids


@functools.cache
def _stream_ids_pattern(max_length: int) -> re.Pattern[str]:
    """Stream ids of at most `max_length` characters, one a line."""
    one = f"[A-Za-z0-9][A-Za-z0-9._:@-]{{0,{max_length - 1}}}"
    return re.compile(f"{one}(?:\n{one})*")


def _seconds(timestamps: list[Any]) -> np.ndarray:
    types = set(map(type, timestamps))
    if str in types:  # ISO 8601 text: no vectorized parser takes every form fromisoformat does
        if not types.issubset(_TIMESTAMP_TYPES):
            raise _NotUniform
        return np.array([parse_timestamp(t) for t in timestamps], np.float64)
    if not _NUMBER_TYPES.issuperset(types):
        raise _NotUniform
    seconds = np.array(timestamps, np.float64)  # (batch,)
    if not ((seconds >= _FIRST_SECOND) & (seconds <= _LAST_SECOND)).all():  # NaN fails too
        raise _NotUniform
    return seconds


def _one_channel(values: list[Any]) -> np.ndarray:
    if not _NUMBER_TYPES.issuperset(map(type, values)):
        raise _NotUniform
    array = np.array(values, np.float64)  # (batch,)
    if not np.isfinite(array).all():
        raise _NotUniform
    return array[:, None]  # (batch, 1)


def _channels(values: list[Any], limits: LimitSettings) -> np.ndarray:
    widths = set(map(len, values)) if set(map(type, values)) == {list} else set()
    if len(widths) != 1 or not 0 < next(iter(widths)) <= limits.max_channels:
        raise _NotUniform
    flat = list(chain.from_iterable(values))
    if not _CHANNEL_TYPES.issuperset(map(type, flat)):
        raise _NotUniform
    array = np.array(values, np.float64)  # (batch, channels); null becomes NaN: missing
    finite = np.isfinite(array)
    if not finite.all() and int((~finite).sum()) != flat.count(None):  # a NaN or inf sent
        raise _NotUniform
    return array


def _validated(raw: Any, stream_id: str | None, limits: LimitSettings) -> Parsed:
    """One item through the wire model: a Reading, or a Failed that words what is wrong."""
    sid = stream_id if stream_id is not None else _get(raw, "stream_id")
    try:
        if stream_id is None:
            item: ReadingIn = _stream_reading.validate_python(raw)
            return to_reading(item, item.stream_id, limits)  # type: ignore[attr-defined]
        return to_reading(_reading.validate_python(raw), stream_id, limits)
    except ValidationError as exc:
        return Failed(sid, _get(raw, "timestamp"), InvalidReadingError(_explain(exc)))
    except StreamwatchError as exc:
        return Failed(sid, _get(raw, "timestamp"), exc)


_KEYS = frozenset(ReadingIn.model_fields) | {"stream_id"}
_MAX_STREAM_ID = 1000  # StreamReadingIn.stream_id's max_length


def _well_formed(raw: Any, stream_id: str | None, limits: LimitSettings) -> Reading | None:
    """The fast path: a plainly well-formed item straight to its Reading, else None.

    Per-item pydantic validation costs several microseconds, most of a batch's time. This
    accepts only what the wire model would accept unchanged (exact types: no bools, no numbers
    in strings, finite values) and gives the same Reading; anything else returns None and goes
    through `_validated`, which also words the error.
    """
    if type(raw) is not dict or not _KEYS.issuperset(raw):
        return None
    try:
        if stream_id is None:
            stream_id = raw["stream_id"]
            if type(stream_id) is not str or len(stream_id) > _MAX_STREAM_ID:
                return None
        elif "stream_id" in raw:
            return None
        timestamp, model = raw["timestamp"], raw.get("model")
        if type(timestamp) not in _TIMESTAMP_TYPES:  # exact types: a bool is not a time
            return None
        seconds = parse_timestamp(timestamp)
        if model is not None and type(model) is not str:
            return None
        value, values = raw.get("value"), raw.get("values")
        if values is None:
            if type(value) is not float and type(value) is not int:
                return None
            floats: tuple[float, ...] = (float(value),)
            if not math.isfinite(floats[0]):
                return None
        elif value is None and type(values) is list and 0 < len(values) <= limits.max_channels:
            floats = tuple(_channel(v) for v in values)
            if not all(map(math.isfinite, floats)) and not _only_missing(values, floats):
                return None
        else:
            return None
        check_stream_id(stream_id, limits)
        return new_reading(Reading, (stream_id, seconds, floats, model))
    except (StreamwatchError, KeyError, TypeError, ValueError, OverflowError):
        return None


_TIMESTAMP_TYPES = (float, int, str)


def _channel(v: Any) -> float:
    if v is None:
        return math.nan
    if type(v) is not float and type(v) is not int:
        raise TypeError("not a plain number")
    return float(v)


def _only_missing(values: list[Any] | None, floats: tuple[float, ...]) -> bool:
    """Whether every non-finite channel is a null (missing), not a NaN or infinity sent."""
    if values is None:
        return False
    return all(v is None or math.isfinite(f) for v, f in zip(values, floats, strict=True))


def _get(raw: Any, key: str) -> Any:
    return raw.get(key) if isinstance(raw, dict) else None


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'reading'}: {e['msg']}" for e in exc.errors()
    )


def error_result_json(failed: Failed) -> dict[str, Any]:
    return {
        "stream_id": failed.stream_id if isinstance(failed.stream_id, str) else None,
        "timestamp": _timestamp_text(failed.timestamp),
        "status": problem(failed.error),
    }


def _timestamp_text(timestamp: Any) -> str | None:
    try:
        return iso(parse_timestamp(timestamp))
    except (StreamwatchError, TypeError, ValueError, OverflowError, OSError):
        return None
