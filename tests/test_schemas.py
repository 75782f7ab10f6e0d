"""Wire parsing: the fast path for well-formed readings agrees with the pydantic models."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from service.alerts import iso
from service.errors import InvalidReadingError
from service.schemas import Failed, _validated, iso_many, parse_items
from service.settings import LimitSettings
from service.stepper import Reading

LIMITS = LimitSettings()

_numbers = st.one_of(
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.sampled_from(["1.5", "x", 10**400]),
)
_timestamps = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "1767225600", "yesterday"]),
    st.sampled_from([253402300799, 253402300800.0, -62135596800, -62135596801.0, 1e300]),
)
_stream_ids = st.one_of(
    st.sampled_from(["pump-1", "a", "b c", "", "x" * 201, "x" * 1001, "é"]), st.integers()
)
_items = st.fixed_dictionaries(
    {"timestamp": _timestamps},
    optional={
        "stream_id": _stream_ids,
        "value": _numbers,
        "values": st.one_of(st.lists(_numbers, max_size=3), _numbers),
        "model": st.one_of(st.none(), st.just("default"), st.integers()),
        "extra": st.just(1),
    },
)


def _same(a: Any, b: Any) -> bool:
    """Equal outcomes: equal readings (NaN equal to NaN), or failures saying the same."""
    if isinstance(a, Reading) and isinstance(b, Reading):
        values_equal = len(a.values) == len(b.values) and all(
            x == y or (math.isnan(x) and math.isnan(y))
            for x, y in zip(a.values, b.values, strict=False)
        )
        return a[:2] == b[:2] and a.model == b.model and values_equal
    if isinstance(a, Failed) and isinstance(b, Failed):
        return (a.stream_id, a.timestamp, type(a.error), a.error.detail) == (
            b.stream_id, b.timestamp, type(b.error), b.error.detail
        )
    return False


@settings(max_examples=600, deadline=None)
@given(item=_items, per_stream=st.booleans())
def test_every_item_parses_as_the_wire_model_would_parse_it(item: dict, per_stream: bool) -> None:
    stream_id = "pump-7" if per_stream else None
    (fast,) = parse_items([item], LIMITS, stream_id)
    assert _same(fast, _validated(item, stream_id, LIMITS))


def test_a_well_formed_batch_becomes_readings_and_a_bad_item_keeps_its_error() -> None:
    items = [
        {"stream_id": "a", "timestamp": 1, "value": 2},
        {"stream_id": "b", "timestamp": "2026-01-01T00:00:00Z", "values": [1.5, None]},
        {"stream_id": "c", "timestamp": 1, "value": math.nan},
    ]
    a, b, c = parse_items(items, LIMITS)
    assert a == Reading("a", 1.0, (2.0,))
    assert isinstance(b, Reading) and b.timestamp == 1767225600.0 and math.isnan(b.values[1])
    assert isinstance(c, Failed) and isinstance(c.error, InvalidReadingError)
    assert "NaN and infinities are refused" in c.error.detail


@given(st.lists(st.one_of(st.integers(0, 253402300799).map(float),
                          st.floats(-1e9, 253402300798.0)), max_size=50))
def test_timestamps_render_in_bulk_exactly_as_one_by_one(timestamps: list[float]) -> None:
    assert iso_many(timestamps) == [iso(t) for t in timestamps]
