"""Engine properties under any sequence of readings, valid or not (hypothesis).

Whatever arrives, in whatever batches: every state stays finite, every accepted reading is
applied exactly once and in order (a stream's `seen` count is its accepted, non-duplicate
readings), a duplicate steps nothing, an older reading is refused, and nothing invalid is
ever applied.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service import dataplane
from service.engine import Engine
from service.parsing import Failed, parse_items
from service.registry import ModelRegistry
from service.results import Result
from service.settings import Settings
from tests.conftest import make_settings

STREAMS = ("a", "b", "c")
# Per-stream fields that are NaN by design until a stream's first or second reading.
AFTER_ONE = ("next_loc", "next_scale", "last_ts")  # since the (re)start, for the forecasts
AFTER_TWO = ("last_loc", "last_scale")  # the forecast the last reading was judged by
AFTER_TWO_IN_ALL = ("interval",)  # a time between two readings; kept through a restart
RANGE = ("score_low", "score_high")  # the values seen: -inf / +inf until one is, never NaN


@dataclass(frozen=True)
class Sent:
    item: Any
    kind: str  # "valid": must apply unless late; "extreme": may be refused as non-finite;
    # "invalid": must never apply


@cache
def _settings() -> Settings:
    return make_settings(Path("never-written"), engine={"max_wait_ms": 0.0},
                         state={"initial_capacity": 2})


@cache
def _registry() -> ModelRegistry:
    return ModelRegistry.load(_settings().model)


def _reading(sid: str, ts: Any, **fields: Any) -> dict[str, Any]:
    return {"stream_id": sid, "timestamp": ts, **fields}


stream_ids = st.sampled_from(STREAMS)
times = st.integers(0, 40)  # a narrow range: duplicates and late readings are common
moderate = st.floats(-1e6, 1e6, allow_nan=False)

valid = st.one_of(
    st.builds(lambda s, t, v: _reading(s, t, value=v), stream_ids, times, moderate),
    st.builds(lambda s, t, v: _reading(s, float(t), values=[v]), stream_ids, times, moderate),
    st.builds(lambda s, t: _reading(s, t, values=[None]), stream_ids, times),  # missing
).map(lambda item: Sent(item, "valid"))

extreme = st.builds(
    lambda s, t, v: _reading(s, t, value=v),
    stream_ids,
    times,
    st.sampled_from([1e300, -1e300, 1.7976931348623157e308, 1e154, 5e-324]),
).map(lambda item: Sent(item, "extreme"))

invalid = st.one_of(
    st.builds(lambda s, t, v: _reading(s, t, value=v), stream_ids, times,
              st.sampled_from([math.nan, math.inf, -math.inf])),
    st.builds(lambda s, t: _reading(s, t, values=[1.0, 2.0]), stream_ids, times),  # channels
    st.builds(lambda s, t: _reading(s, t, value=1.0, values=[1.0]), stream_ids, times),
    st.builds(lambda s, t: _reading(s, t), stream_ids, times),
    st.builds(lambda t: _reading("a b", t, value=1.0), times),
    st.builds(lambda s: _reading(s, "yesterday", value=1.0), stream_ids),
    st.builds(lambda s: _reading(s, 1e20, value=1.0), stream_ids),
    st.builds(lambda s, t: _reading(s, t, value=1.0, model="nope"), stream_ids, times),
    st.sampled_from([5, None, "reading", [1, 2]]),
).map(lambda item: Sent(item, "invalid"))

batches = st.lists(
    st.lists(st.one_of(valid, valid, extreme, invalid), min_size=1, max_size=10),
    min_size=1,
    max_size=6,
)


async def _run(sent: list[list[Sent]]) -> tuple[list[Any], dict[str, Any], Engine]:
    """All batches submitted concurrently, in order; the outcomes and each stream's record."""
    engine = Engine(_registry(), _settings(), lambda events: None)
    await engine.start()
    try:
        limits = _settings().limits
        results = await asyncio.gather(*(
            dataplane.resolve(engine, parse_items([s.item for s in batch], limits))
            for batch in sent
        ))
        infos = {sid: engine.stream_info(sid) for sid in STREAMS if _bound(engine, sid)}
    finally:
        await engine.stop()
    return [entry for entries in results for entry in entries], infos, engine


def _bound(engine: Engine, stream_id: str) -> bool:
    return any(s.arena.slot_of(stream_id) is not None for s in engine.steppers().values())


@given(batches)
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
def test_every_accepted_reading_applies_once_in_order_and_states_stay_finite(
    sent: list[list[Sent]],
) -> None:
    entries, infos, engine = asyncio.run(_run(sent))
    last: dict[str, float] = {}
    applied = dict.fromkeys(STREAMS, 0)
    for s, entry in zip([s for batch in sent for s in batch], entries, strict=True):
        if isinstance(entry, Result):
            assert s.kind != "invalid", (s.item, entry)
            sid, ts = entry.stream_id, entry.timestamp
            if entry.duplicate:
                assert last.get(sid) == ts  # a retry of the last applied reading
            else:
                assert sid not in last or ts > last[sid]  # strictly in order
                last[sid] = ts
                applied[sid] += 1
            continue
        assert isinstance(entry, Failed)
        status = entry.error.status
        if s.kind == "invalid":
            assert status in (404, 409, 413, 422), (s.item, entry.error)
            continue
        sid, ts = s.item["stream_id"], float(s.item["timestamp"])
        if sid in last and ts < last[sid]:
            assert status == 409
        else:  # new time, yet refused: only an extreme value whose forecast overflows
            assert s.kind == "extreme" and status == 422, (s.item, entry.error)
            assert "non-finite" in entry.error.detail
    for sid in STREAMS:
        info = infos.get(sid)
        assert (0 if info is None else info.readings) == applied[sid]
        if info is not None and applied[sid]:
            assert info.last_timestamp == last[sid]
    _assert_finite(engine)


def _assert_finite(engine: Engine) -> None:
    for stepper in engine.steppers().values():
        arena = stepper.arena
        slots = np.array([arena.slot_of(sid) for sid in arena.stream_ids()], np.int64)
        if not slots.size:
            continue
        a = arena.arrays
        rows_of = {
            AFTER_ONE: slots[a["count"][slots] >= 1],
            AFTER_TWO: slots[a["count"][slots] >= 2],
            AFTER_TWO_IN_ALL: slots[a["seen"][slots] >= 2],
        }
        for name, values in a.items():
            if name in RANGE:
                assert not np.isnan(values[slots]).any(), name
                continue
            rows = next((r for names, r in rows_of.items() if name in names), slots)
            assert np.isfinite(values[rows]).all(), name
