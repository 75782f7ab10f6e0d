"""The engine: ordering, exactly-once application, time rules, bad values, alerts, capacity."""

from __future__ import annotations

import asyncio
import math
import random
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from service import dataplane
from service.engine import Engine
from service.errors import (
    CapacityError,
    InvalidReadingError,
    ModelMismatchError,
    OutOfOrderError,
    UnknownModelError,
)
from service.results import Reading, ReadingArrays, Result, ResultRuns
from service.settings import Settings
from tests.conftest import MODELS_DIR, make_settings, running_engine, sine, stream_state

pytestmark = pytest.mark.anyio


def _readings(stream_id: str, values: np.ndarray, start: float = 0.0) -> list[Reading]:
    return [Reading(stream_id, start + i, (float(v),)) for i, v in enumerate(values)]


def _comparable(result: object) -> object:
    """A result without its alert id (ids are random), for comparing two runs."""
    if isinstance(result, Result):
        event = None if result.alert is None else result.alert.event
        return (result.stream_id, result.timestamp, result.forecast_loc, result.forecast_scale,
                result.score, result.anomaly, result.warming_up, result.gap, event)
    return repr(result)


async def _fed_alone(tmp_path: Path, n_streams: int, n_readings: int) -> tuple[
    dict[str, np.ndarray], Settings,
    tuple[dict[str, list[object]], dict[str, dict[str, np.ndarray]]],
]:
    """Streams' series, settings of small rounds, and each stream's results and final state
    with its readings submitted one at a time."""
    series = {f"s{i}": sine(n_readings, period=20 + 3 * i, seed=i, level=10 * i)
              for i in range(n_streams)}
    series["s3"][n_readings - 30] += 25.0  # one spike, so alerts are part of what must match
    settings = make_settings(tmp_path, engine={"max_wait_ms": 0.2, "max_batch": 7})
    alone: dict[str, list[object]] = {}
    alone_state = {}
    async with running_engine(settings) as engine:
        for sid, values in series.items():
            alone[sid] = [_comparable(r) for reading in _readings(sid, values)
                          for r in await engine.submit([reading])]
            alone_state[sid] = stream_state(engine, sid)
    return series, settings, (alone, alone_state)


def _assert_as_alone(
    engine: Engine, together: dict[str, list[object]], alone: dict[str, list[object]],
    alone_state: dict[str, dict[str, np.ndarray]],
) -> None:
    for sid in alone:
        assert together[sid] == alone[sid]
        state = stream_state(engine, sid)
        for name, array in alone_state[sid].items():
            np.testing.assert_array_equal(state[name], array, err_msg=f"{sid}.{name}")


async def test_concurrent_clients_give_bitwise_the_results_of_each_stream_fed_alone(
    tmp_path: Path,
) -> None:
    n_streams, n_readings = 12, 160
    series, settings, (alone, alone_state) = await _fed_alone(tmp_path, n_streams, n_readings)
    rng = random.Random(7)
    position = dict.fromkeys(series, 0)
    busy: set[str] = set()
    together: dict[str, list[object]] = {sid: [] for sid in series}

    async def client() -> None:
        while any(position[s] < n_readings for s in series):
            free = [s for s in series if s not in busy and position[s] < n_readings]
            if not free:
                await asyncio.sleep(0)
                continue
            chosen = rng.sample(free, k=min(len(free), rng.randint(1, 4)))
            busy.update(chosen)
            queues = {}
            for sid in chosen:
                take = rng.randint(1, 9)
                start = position[sid]
                queues[sid] = _readings(sid, series[sid][start : start + take], start)
                position[sid] = min(start + take, n_readings)
            batch = []  # interleave the chosen streams, each stream's readings kept in order
            while any(queues.values()):
                sid = rng.choice([s for s in queues if queues[s]])
                batch.append(queues[sid].pop(0))
            results = await engine.submit(batch)
            assert [(r.stream_id, r.timestamp) for r in results] == [
                (b.stream_id, b.timestamp) for b in batch
            ]
            for r in results:
                together[r.stream_id].append(_comparable(r))
            busy.difference_update(chosen)

    async with running_engine(settings) as engine:
        await asyncio.gather(*(client() for _ in range(16)))
        assert engine.rounds < n_streams * n_readings  # readings really were batched
        _assert_as_alone(engine, together, alone, alone_state)


async def test_columns_and_rows_from_many_clients_give_bitwise_the_results_fed_alone(
    tmp_path: Path,
) -> None:
    """Batches as columns, pipelined (each next one a later time step of the same streams,
    queued before the last is answered), among batches of rows: rounds take columns in runs,
    a part of a batch at a time, and each stream's readings still apply in order, exactly as
    if each stream were fed alone. Their columns answer as the same results cut per row."""
    n_streams, n_readings = 10, 120
    series, settings, (alone, alone_state) = await _fed_alone(tmp_path, n_streams, n_readings)
    rng = random.Random(11)
    position = dict.fromkeys(series, 0)
    busy: set[str] = set()
    together: dict[str, list[object]] = {sid: [] for sid in series}
    answered_as_columns = 0

    async def client() -> None:
        nonlocal answered_as_columns
        while any(position[s] < n_readings for s in series):
            free = [s for s in series if s not in busy and position[s] < n_readings]
            if not free:
                await asyncio.sleep(0)
                continue
            chosen = sorted(rng.sample(free, k=min(len(free), rng.randint(1, 5))))
            busy.update(chosen)
            steps = rng.randint(1, 4)
            futures, sent = [], []
            for _ in range(steps):
                ids = [s for s in chosen if position[s] < n_readings]
                if not ids:
                    break
                rng.shuffle(ids)
                at = [position[s] for s in ids]
                for s in ids:
                    position[s] += 1
                if rng.random() < 0.25:  # one by one, queued behind any columns
                    batch = [Reading(s, float(t), (float(series[s][t]),))
                             for s, t in zip(ids, at, strict=True)]
                    futures.append(engine.enqueue(batch))
                    sent.append(None)
                else:
                    columns = ReadingArrays(
                        ids, np.array(at, np.float64),
                        np.array([[series[s][t]] for s, t in zip(ids, at, strict=True)]),
                    )
                    futures.append(engine.enqueue_columns(columns))
                    sent.append(columns)
                await asyncio.sleep(0)
            for future, columns in zip(futures, sent, strict=True):
                got = await future
                if isinstance(got, ResultRuns):
                    answered_as_columns += 1
                    # From the arrays, the same on the wire as from one Result per reading:
                    each = dataplane.entries(columns, got)
                    for as_columns, render in ((True, dataplane.render_columns),
                                               (False, dataplane.render)):
                        cut = dataplane.answer(columns, got, columns=as_columns)
                        assert cut == orjson.dumps(render(each))
                    got = got.outcomes()
                for r in got:
                    together[r.stream_id].append(_comparable(r))
            busy.difference_update(chosen)

    async with running_engine(settings) as engine:
        await asyncio.gather(*(client() for _ in range(6)))
        _assert_as_alone(engine, together, alone, alone_state)
    assert answered_as_columns > 50  # most batches went through as columns


async def test_a_refused_reading_among_columns_gets_its_error_and_the_rest_go_on(
    settings,
) -> None:
    def columns(ids: list[str], ts: list[float]) -> ReadingArrays:
        return ReadingArrays(ids, np.array(ts), np.ones((len(ids), 1)))

    async with running_engine(settings) as engine:
        await engine.enqueue_columns(columns(["a", "b", "c"], [0.0, 0.0, 0.0]))  # binds them
        await engine.enqueue_columns(columns(["a", "b", "c"], [5.0, 5.0, 5.0]))
        late = columns(["a", "b", "c"], [6.0, 3.0, 6.0])
        got = await engine.enqueue_columns(late)
        assert isinstance(got, ResultRuns)  # all three bound: they went as columns
        body = orjson.loads(dataplane.answer(late, got, columns=True))["columns"]
        assert body["status"][0] == body["status"][2] == "ok"
        assert body["status"][1]["status"] == 409 and body["score"][1] is None
        assert [stream_state(engine, s)["seen"] for s in "abc"] == [3, 2, 3]
        again = await engine.enqueue_columns(columns(["a", "a"], [7.0, 8.0]))  # not distinct
        assert not isinstance(again, ResultRuns)
        assert [r.timestamp for r in again] == [7.0, 8.0]


async def test_results_come_back_in_the_order_sent(settings) -> None:
    batch = [Reading(sid, t, (1.0,)) for t in range(5) for sid in ("b", "a", "c")]
    batch += [Reading("d", t, (2.0,)) for t in range(6)]
    async with running_engine(settings) as engine:
        results = await engine.submit(batch)
    assert [(r.stream_id, r.timestamp) for r in results] == [
        (r.stream_id, r.timestamp) for r in batch
    ]


async def test_a_streams_later_readings_wait_for_later_rounds_one_each(settings) -> None:
    batch = [Reading("a", float(t), (1.0,)) for t in range(3)]
    batch += [Reading("b", 0.0, (1.0,)), Reading("c", 0.0, (1.0,))]
    async with running_engine(settings) as engine:
        rounds = engine.rounds
        results = await engine.submit(batch)
        assert engine.rounds - rounds == 3  # {a@0, b, c}, {a@1}, {a@2}
        assert engine.queued == 0
    assert all(isinstance(r, Result) and not r.duplicate for r in results)
    assert [r.timestamp for r in results if isinstance(r, Result)] == [0.0, 1.0, 2.0, 0.0, 0.0]


async def test_a_retried_reading_returns_its_first_result_without_stepping(settings) -> None:
    readings = _readings("pump", sine(30))
    async with running_engine(settings) as engine:
        first = await engine.submit(readings)
        before = stream_state(engine, "pump")
        (again,) = await engine.submit([readings[-1]])
        assert stream_state(engine, "pump").keys() == before.keys()
        for name, array in stream_state(engine, "pump").items():
            np.testing.assert_array_equal(array, before[name])
    assert again.duplicate and not first[-1].duplicate
    assert _comparable(again) == _comparable(first[-1])


async def test_an_older_reading_is_refused_and_the_state_is_untouched(settings) -> None:
    async with running_engine(settings) as engine:
        await engine.submit(_readings("pump", sine(30)))
        before = stream_state(engine, "pump")
        (refused,) = await engine.submit([Reading("pump", 10.0, (0.5,))])
        after = stream_state(engine, "pump")
    assert isinstance(refused, OutOfOrderError) and refused.status == 409
    for name, array in before.items():
        np.testing.assert_array_equal(after[name], array)


async def test_a_long_gap_rewarms_the_stream_and_says_so(settings) -> None:
    values = sine(150)
    async with running_engine(settings) as engine:
        await engine.submit(_readings("pump", values))
        assert not engine.stream_info("pump").warming_up
        (after_gap,) = await engine.submit([Reading("pump", 149.0 + 1000.0, (0.3,))])
        state = stream_state(engine, "pump")
    assert after_gap.gap and after_gap.warming_up
    assert state["count"] == 1 and state["seen"] == 151
    assert not state["state_h"].any() or after_gap.forecast_loc is None


@pytest.mark.parametrize(("poisoned", "bad", "unit"), [
    ("forecast", np.nan, 0), ("state", np.nan, 0), ("state", np.nan, -1),
    ("state", np.inf, 0), ("state", -np.inf, -1),
])
@pytest.mark.parametrize("after_a_gap", [False, True])
async def test_a_reading_whose_model_output_is_not_finite_is_refused_and_its_stream_kept(
    settings, monkeypatch: pytest.MonkeyPatch, poisoned: str, bad: float, unit: int,
    after_a_gap: bool,
) -> None:
    at = 149.0 + (1000.0 if after_a_gap else 1.0)  # after a gap, the stream would be rewarmed
    async with running_engine(settings) as engine:
        await engine.submit(_readings("pump", sine(150)) + _readings("tank", sine(150)))
        before = stream_state(engine, "pump")
        model = engine.steppers()["default"].model
        step = model.step

        def poisons_pump(x: np.ndarray, state: tuple[np.ndarray, ...]) -> object:
            loc, scale, new_state = step(x, state)
            if poisoned == "forecast":  # the round's first row: pump's reading
                loc[0] = bad
            else:  # one unit of its new state; its forecast is fine
                new_state[0][-1, 0, unit] = bad
            return loc, scale, new_state

        monkeypatch.setattr(model, "step", poisons_pump)
        refused, tank = await engine.submit([Reading("pump", at, (0.3,)),
                                             Reading("tank", at, (0.3,))])
        after = stream_state(engine, "pump")
    assert isinstance(refused, InvalidReadingError) and "non-finite" in refused.detail
    assert isinstance(tank, Result)  # applied, rewarmed after a gap
    assert tank.gap == tank.warming_up == after_a_gap
    for name, array in before.items():
        np.testing.assert_array_equal(after[name], array, err_msg=name)


async def test_a_round_whose_model_call_fails_leaves_a_gapped_stream_unrewarmed(
    settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.errors import RoundFailedError

    async with running_engine(settings) as engine:
        await engine.submit(_readings("pump", sine(150)))
        before = stream_state(engine, "pump")
        model = engine.steppers()["default"].model

        def fails(x: np.ndarray, state: tuple[np.ndarray, ...]) -> object:
            raise RuntimeError("the model call failed")

        monkeypatch.setattr(model, "step", fails)
        (failed,) = await engine.submit([Reading("pump", 149.0 + 1000.0, (0.3,))])
        after = stream_state(engine, "pump")
        monkeypatch.undo()
        (retried,) = await engine.submit([Reading("pump", 149.0 + 1000.0, (0.3,))])
    assert isinstance(failed, RoundFailedError)
    for name, array in before.items():
        np.testing.assert_array_equal(after[name], array, err_msg=name)
    assert isinstance(retried, Result) and retried.gap and retried.warming_up


async def test_a_gap_with_policy_ignore_is_flagged_but_keeps_the_state(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, time={"gap_policy": "ignore"})
    async with running_engine(settings) as engine:
        await engine.submit(_readings("pump", sine(150)))
        (after_gap,) = await engine.submit([Reading("pump", 2000.0, (0.3,))])
    assert after_gap.gap and not after_gap.warming_up and after_gap.forecast_loc is not None


async def test_a_missing_channel_advances_on_the_forecast_and_cannot_alert(settings) -> None:
    async with running_engine(settings) as engine:
        results = await engine.submit(_readings("pump", sine(150)))
        forecast = results[-1]
        before = stream_state(engine, "pump")
        (missing,) = await engine.submit([Reading("pump", 150.0, (math.nan,))])
        after = stream_state(engine, "pump")
    assert missing.anomaly is False and missing.score == 0.0
    assert after["count"] == before["count"] + 1
    assert np.isfinite(after["state_h"]).all() and not np.array_equal(
        after["state_h"], before["state_h"]
    )
    np.testing.assert_array_equal(after["mean"], before["mean"])  # nothing was observed
    assert forecast.forecast_loc is not None


async def test_wrong_channel_count_unknown_model_and_rebinding_are_refused(settings) -> None:
    async with running_engine(settings) as engine:
        wrong, unknown, ok = await engine.submit([
            Reading("a", 0.0, (1.0, 2.0)),
            Reading("b", 0.0, (1.0,), model="no-such-model"),
            Reading("c", 0.0, (1.0,), model="default"),
        ])
        (mismatch,) = await engine.submit([Reading("c", 1.0, (1.0,), model="other")])
        # A bound stream's reading with the wrong channels, in a round of bound streams
        await engine.submit([Reading("ok", 1.0, (1.0,))])
        too_many, applied = await engine.submit([Reading("c", 2.0, (1.0, 2.0)),
                                                 Reading("ok", 2.0, (1.0,))])
        assert "a" not in engine.live_streams and engine.live_streams["default"] == 2
    assert isinstance(wrong, InvalidReadingError) and wrong.status == 422
    assert isinstance(too_many, InvalidReadingError) and isinstance(applied, Result)
    assert isinstance(unknown, UnknownModelError) and unknown.status == 404
    assert isinstance(ok, Result)
    assert isinstance(mismatch, ModelMismatchError) and mismatch.status == 409


async def test_an_injected_spike_opens_exactly_one_alert_that_closes_again(settings) -> None:
    values = sine(400, period=40, noise=0.05, seed=3, level=50.0, amplitude=5.0)
    values[300] += 30.0
    events: list = []
    async with running_engine(settings, events) as engine:
        results = await engine.submit(_readings("turbine", values))
    kinds = [(kind, alert.stream_id) for kind, alert in events]
    assert kinds == [("opened", "turbine"), ("closed", "turbine")]
    opened = events[0][1]
    assert opened.opened_at == 300.0 and opened.actual_at_peak == [values[300]]
    assert results[300].anomaly and results[300].alert.event == "opened"
    assert not any(r.anomaly for r in results[:300])
    closed = events[1][1]
    assert closed.closed_at is not None and closed.closed_at > 300.0
    assert results[int(closed.closed_at)].alert.event == "closed"


async def test_an_alert_counts_its_readings_and_keeps_the_peak_while_open_and_once_closed(
    settings,
) -> None:
    values = sine(400, period=40, noise=0.05, seed=3, level=50.0, amplitude=5.0)
    values[300:304] += [30.0, 12.0, 45.0, 20.0]
    events: list = []
    async with running_engine(settings, events) as engine:
        results = await engine.submit(_readings("turbine", values[:304]))
        still_open = engine.stream_info("turbine").open_alert
        results += await engine.submit(_readings("turbine", values[304:], start=304.0))
    (_, opened), (_, closed) = events
    inside = results[300 : int(closed.closed_at)]  # from the opening reading to the closing one
    assert still_open is not None and still_open.readings == 4
    assert still_open.peak_score == max(r.score for r in inside[:4])
    assert closed.id == opened.id and closed.readings == len(inside)
    peak = max(inside, key=lambda r: r.score)  # the first of the highest
    assert (closed.peak_score, closed.peak_at) == (peak.score, peak.timestamp)
    assert closed.actual_at_peak == [values[int(peak.timestamp)]]
    assert closed.forecast_at_peak == peak.forecast_loc


async def test_readings_in_warm_up_get_forecasts_but_no_score_and_never_alert(settings) -> None:
    values = sine(60)
    values[40] += 100.0
    events: list = []
    async with running_engine(settings, events) as engine:
        results = await engine.submit(_readings("pump", values))
    assert all(r.warming_up for r in results)
    assert results[40].forecast_loc is not None
    assert results[40].score == 0.0 and not results[40].anomaly
    assert events == []


async def test_a_full_arena_refuses_new_streams_and_keeps_serving_the_old(tmp_path) -> None:
    settings = make_settings(tmp_path, state={"max_streams": 3, "initial_capacity": 1})
    async with running_engine(settings) as engine:
        first = await engine.submit([Reading(f"s{i}", 0.0, (1.0,)) for i in range(3)])
        refused, kept = await engine.submit([Reading("s9", 0.0, (1.0,)),
                                             Reading("s0", 1.0, (1.0,))])
        engine.forget("s1")
        (admitted,) = await engine.submit([Reading("s9", 0.0, (1.0,))])
    assert all(isinstance(r, Result) for r in first)
    assert isinstance(refused, CapacityError) and refused.status == 503
    assert isinstance(kept, Result) and isinstance(admitted, Result)


async def test_idle_streams_are_forgotten_after_the_ttl(tmp_path) -> None:
    settings = make_settings(tmp_path, state={"ttl_s": 0.05})
    async with running_engine(settings) as engine:
        await engine.submit([Reading("old", 0.0, (1.0,))])
        await asyncio.sleep(0.1)
        await engine.submit([Reading("new", 0.0, (1.0,))])
        await asyncio.sleep(0.03)  # the sweep runs every ttl/2
        await engine.submit([Reading("new", 1.0, (1.0,))])
        assert engine.stream_ids(None, 10)[0] == ["new"]


async def test_routes_and_per_stream_thresholds_apply_to_new_streams(tmp_path) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS_DIR / "default", models / "default")
    shutil.copytree(MODELS_DIR / "default", models / "pumps")
    settings = make_settings(
        tmp_path,
        model={"dir": models, "routes": [{"pattern": "pump-*", "model": "pumps"}]},
        scoring={"stream_thresholds": [{"pattern": "*-critical", "threshold": 0.5}]},
    )
    async with running_engine(settings) as engine:
        pump, other, critical = await engine.submit([
            Reading("pump-1", 0.0, (1.0,)),
            Reading("fan-1", 0.0, (1.0,)),
            Reading("fan-critical", 0.0, (1.0,)),
        ])
    assert (pump.model, other.model) == ("pumps", "default")
    assert critical.threshold == 0.5 and other.threshold != 0.5


class _FailsOnce:
    """An observer that raises on the `at`-th round it is told of: a fault inside a round."""

    def __init__(self, at: int = 1) -> None:
        self.rounds = 0
        self.at = at

    def stepped(self, model: str, block: object, seconds: float) -> None:
        self.rounds += 1
        if self.rounds == self.at:
            raise RuntimeError("injected fault")

    def refused(self, errors: object) -> None:
        pass

    def round_done(self, size: int, events: object) -> None:
        pass


async def test_a_fault_in_one_round_fails_its_readings_and_the_engine_goes_on(settings) -> None:
    from service.errors import RoundFailedError
    from service.registry import ModelRegistry

    engine = Engine(ModelRegistry.load(settings.model), settings, lambda events: None,
                    observer=_FailsOnce())
    await engine.start()
    try:
        (failed,) = await asyncio.wait_for(engine.submit([Reading("a", 0.0, (1.0,))]), 5)
        (ok,) = await asyncio.wait_for(engine.submit([Reading("b", 0.0, (1.0,))]), 5)
    finally:
        await engine.stop()
    assert isinstance(failed, RoundFailedError) and failed.status == 500
    assert isinstance(ok, Result)


async def test_a_fault_in_a_round_of_columns_fails_its_readings_and_the_engine_goes_on(
    settings,
) -> None:
    from service.errors import RoundFailedError
    from service.registry import ModelRegistry

    engine = Engine(ModelRegistry.load(settings.model), settings, lambda events: None,
                    observer=_FailsOnce(at=2))
    ids = ["a", "b"]
    await engine.start()
    try:
        first = await engine.enqueue_columns(ReadingArrays(ids, np.zeros(2), np.ones((2, 1))))
        failed = await asyncio.wait_for(
            engine.enqueue_columns(ReadingArrays(ids, np.ones(2), np.ones((2, 1)))), 5
        )
        ok = await asyncio.wait_for(
            engine.enqueue_columns(ReadingArrays(ids, np.full(2, 2.0), np.ones((2, 1)))), 5
        )
    finally:
        await engine.stop()
    assert all(isinstance(r, Result) for r in first)  # new streams: bound one by one
    assert [type(r) for r in failed] == [RoundFailedError] * 2
    assert isinstance(ok, ResultRuns) and all(isinstance(r, Result) for r in ok.outcomes())
