"""Parsing: the fast path for well-formed readings agrees with the pydantic wire models."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import InvalidReadingError, LimitExceededError
from service.parsing import (
    Failed,
    _uniform,
    _uniform_columns,
    _validated,
    as_parsed,
    parse_columns,
    parse_items,
)
from service.results import Reading
from service.settings import LimitSettings

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
    (fast,) = as_parsed(parse_items([item], LIMITS, stream_id))
    assert _same(fast, _validated(item, stream_id, LIMITS))


def test_a_well_formed_batch_becomes_readings_and_a_bad_item_keeps_its_error() -> None:
    items = [
        {"stream_id": "a", "timestamp": 1, "value": 2},
        {"stream_id": "b", "timestamp": "2026-01-01T00:00:00Z", "values": [1.5, None]},
        {"stream_id": "c", "timestamp": 1, "value": math.nan},
    ]
    a, b, c = as_parsed(parse_items(items, LIMITS))
    assert a == Reading("a", 1.0, (2.0,))
    assert isinstance(b, Reading) and b.timestamp == 1767225600.0 and math.isnan(b.values[1])
    assert isinstance(c, Failed) and isinstance(c.error, InvalidReadingError)
    assert "NaN and infinities are refused" in c.error.detail


_good_numbers = st.one_of(st.floats(-1e12, 1e12), st.integers(-(10**9), 10**9))
_good_timestamps = st.one_of(
    st.integers(-62135596800, 253402300799),
    st.floats(-62135596800.0, 253402300799.0),
    st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.5+02:00", "1767225600"]),
)
_good_stream_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,30}", fullmatch=True)
_BAD_FIELDS = [
    ("value", math.nan), ("value", True), ("value", "1.5"), ("value", 10**400),
    ("values", [math.inf]), ("values", []), ("values", [1.0, 2.0, 3.0, 4.0]),
    ("timestamp", 253402300800), ("timestamp", "yesterday"), ("timestamp", None),
    ("stream_id", "b c"), ("stream_id", "a\nb"), ("stream_id", "x" * 201), ("stream_id", 7),
    ("model", 3), ("extra", 1),
]
_bad_fields = st.sampled_from(_BAD_FIELDS)


@st.composite
def _uniform_batches(draw: st.DrawFn) -> tuple[list[dict], str | None, bool]:
    """A batch of one shape, all well formed, or with one field of one item spoilt."""
    per_stream, multi, with_model = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    width = draw(st.integers(1, 3))
    items = []
    for _ in range(draw(st.integers(8, 24))):
        item: dict[str, Any] = {"timestamp": draw(_good_timestamps)}
        if not per_stream:
            item["stream_id"] = draw(_good_stream_ids)
        if multi:
            item["values"] = draw(st.lists(st.one_of(_good_numbers, st.none()),
                                           min_size=width, max_size=width))
        else:
            item["value"] = draw(_good_numbers)
        if with_model:
            item["model"] = draw(st.sampled_from([None, "default", "other"]))
        items.append(item)
    spoilt = draw(st.booleans())
    if spoilt:
        key, bad = draw(_bad_fields)
        items[draw(st.integers(0, len(items) - 1))][key] = bad
    return items, ("pump-7" if per_stream else None), spoilt


@settings(max_examples=300, deadline=None)
@given(batch=_uniform_batches())
def test_a_batch_as_items_or_as_columns_parses_as_its_items_would_one_by_one(
    batch: tuple[list[dict], str | None, bool],
) -> None:
    items, stream_id, spoilt = batch
    expected = [_validated(item, stream_id, LIMITS) for item in items]
    keys = list(items[0])
    batches = [as_parsed(parse_items(items, LIMITS, stream_id))]
    if all(list(item) == keys for item in items):  # else a field only one item has: no column
        columns = {key: [item[key] for item in items] for key in keys}
        batches.append(as_parsed(parse_columns({"columns": columns}, LIMITS, stream_id)))
    for parsed in batches:
        assert len(parsed) == len(items)
        assert all(_same(got, want) for got, want in zip(parsed, expected, strict=True))
    if not spoilt:  # a well-formed batch of one shape is checked as a whole, not item by item
        assert _uniform(items, stream_id, LIMITS) is not None
        assert _uniform_columns(columns, stream_id, LIMITS) is not None


@pytest.mark.parametrize(("body", "says"), [
    ({"columns": {"stream_id": ["a", "b"], "timestamp": [1], "value": [1.0, 2.0]}},
     "equally long"),
    ({"columns": {"stream_id": ["a"], "timestamp": [1], "value": [1.0], "colour": ["red"]}},
     "unknown column(s) colour"),
    ({"columns": {"stream_id": "a", "timestamp": [1], "value": [1.0]}}, "must be a list"),
    ({"columns": [["a"], [1], [1.0]]}, "equally long lists"),
    ({"columns": {}}, "equally long lists"),
    ({"columns": {"stream_id": ["a"], "timestamp": [1], "value": [1.0]}, "seq": 1},
     "not ['seq']"),
])
def test_a_body_that_is_not_columns_is_refused_as_a_whole(body: dict, says: str) -> None:
    with pytest.raises(InvalidReadingError) as refused:
        parse_columns(body, LIMITS)
    assert says in refused.value.detail


def test_a_stream_routes_columns_have_no_stream_id_column() -> None:
    body = {"columns": {"stream_id": ["a"], "timestamp": [1], "value": [1.0]}}
    with pytest.raises(InvalidReadingError, match="unknown column"):
        parse_columns(body, LIMITS, "pump-1")
    (reading,) = as_parsed(
        parse_columns({"columns": {"timestamp": [1], "value": [1.0]}}, LIMITS, "pump-1")
    )
    assert reading == Reading("pump-1", 1.0, (1.0,))


def test_columns_without_timestamps_are_refused_reading_by_reading() -> None:
    ids = [f"s{i}" for i in range(10)]
    for body, stream_id in (
        ({"columns": {"stream_id": ids, "value": [1.0] * 10}}, None),
        ({"columns": {"value": [1.0] * 10}}, "pump-1"),
    ):
        parsed = as_parsed(parse_columns(body, LIMITS, stream_id))
        assert len(parsed) == 10 and all(isinstance(p, Failed) for p in parsed)
        assert "timestamp" in parsed[0].error.detail


def test_columns_over_the_batch_limit_answer_413() -> None:
    limits = LimitSettings(max_readings_per_request=3)
    columns = {"stream_id": ["a"] * 4, "timestamp": [1, 2, 3, 4], "value": [1.0] * 4}
    with pytest.raises(LimitExceededError):
        parse_columns({"columns": columns}, limits)


@pytest.mark.parametrize(("key", "bad"), _BAD_FIELDS)
def test_one_odd_field_in_a_uniform_batch_is_judged_as_the_wire_model_would(
    key: str, bad: Any
) -> None:
    items = [{"stream_id": f"s{i}", "timestamp": 1767225600 + i, "value": 0.5} for i in range(10)]
    items[4][key] = bad
    parsed = as_parsed(parse_items(items, LIMITS))
    assert all(isinstance(p, Reading) for i, p in enumerate(parsed) if i != 4)
    for got, item in zip(parsed, items, strict=True):
        assert _same(got, _validated(item, None, LIMITS))


@pytest.mark.parametrize("stream_id", ["pump-1\n", "pump-1\nx", "\npump-1"])
def test_a_stream_id_with_a_newline_is_refused_alone_and_in_a_batch(stream_id: str) -> None:
    items = [{"stream_id": f"s{i}", "timestamp": 1, "value": 1.0} for i in range(9)]
    items[4]["stream_id"] = stream_id
    for batch in ([items[4]], items):
        outcome = as_parsed(parse_items(batch, LIMITS))[batch.index(items[4])]
        assert isinstance(outcome, Failed) and "must match" in outcome.error.detail


@pytest.mark.parametrize("item", [["a", 1, 1.0], "abc", 7, None, [{"a": 1}] * 3])
def test_an_item_that_is_not_a_reading_object_is_refused_alone_in_a_batch(item: Any) -> None:
    items: list[Any] = [{"stream_id": f"s{i}", "timestamp": 1, "value": 1.0} for i in range(9)]
    items[4] = item  # as many entries as a reading has fields, where it has a length
    parsed = as_parsed(parse_items(items, LIMITS))
    assert isinstance(parsed[4], Failed) and parsed[4].error.status == 422
    assert all(isinstance(p, Reading) for i, p in enumerate(parsed) if i != 4)
