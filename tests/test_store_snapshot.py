"""State snapshots: bit-for-bit round trips, atomic writes, bad files set aside and never loaded."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from service.alerts import Alert
from service.engine import Engine
from service.registry import ModelRegistry
from service.settings import Settings
from service.store.local import LocalStore
from service.store.snapshot import (
    Snapshot,
    Snapshotter,
    read_snapshot,
    restore_snapshot,
    write_snapshot,
)
from service.store.sqlite import SqliteAlertLog
from tests.conftest import MODELS_DIR, make_settings, running_engine, stream_state
from tests.store_support import (
    alert_key,
    cut_inside_an_alert,
    readings_of,
    reference_run,
    spiky_series,
    wire,
)

pytestmark = pytest.mark.anyio


def _shas(registry: ModelRegistry) -> dict[str, str]:
    return {name: model.card.sha256 for name, model in registry.models.items()}


async def _take_snapshot(
    settings: Settings, path: Path, series: dict[str, np.ndarray], upto: int
) -> dict[str, dict[str, np.ndarray]]:
    """Feed each stream's first `upto` readings, snapshot to `path`; returns the states."""
    registry = ModelRegistry.load(settings.model)
    async with running_engine(settings) as engine:
        for sid, values in series.items():
            await engine.submit(readings_of(sid, values[:upto]))
        write_snapshot(path, Snapshot.pack(time.time(), engine.snapshot(), _shas(registry)))
        return {sid: stream_state(engine, sid) for sid in series}


def _assert_same_state(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].tobytes() == want[name].tobytes(), name  # bit for bit, NaNs too


async def test_an_engine_restored_from_a_snapshot_continues_bitwise_like_one_never_stopped(
    tmp_path: Path,
) -> None:
    settings, series = make_settings(tmp_path), spiky_series()
    expected, expected_events = await reference_run(settings, series)
    cut, alert = cut_inside_an_alert(expected_events)
    path = tmp_path / "state.snapshot"
    registry = ModelRegistry.load(settings.model)

    before_events: list[tuple[str, Alert]] = []
    async with running_engine(settings, before_events) as engine:
        before = {sid: [wire(r) for r in await engine.submit(readings_of(sid, v[:cut]))]
                  for sid, v in series.items()}
        write_snapshot(path, Snapshot.pack(time.time(), engine.snapshot(), _shas(registry)))
        states = {sid: stream_state(engine, sid) for sid in series}
    assert ("opened", alert_key(alert)) in [(k, alert_key(a)) for k, a in before_events]

    after_events: list[tuple[str, Alert]] = []
    engine = Engine(registry, settings, after_events.extend)
    report = restore_snapshot(path, engine, registry)
    assert (report.status, report.streams) == ("restored", len(series))
    for sid in series:
        _assert_same_state(stream_state(engine, sid), states[sid])
    await engine.start()
    try:
        after = {sid: [wire(r) for r in await engine.submit(readings_of(sid, v[cut:], cut))]
                 for sid, v in series.items()}
    finally:
        await engine.stop()

    assert {sid: before[sid] + after[sid] for sid in series} == expected
    events = before_events + after_events
    assert sorted((k, alert_key(a)) for k, a in events) == sorted(
        (k, alert_key(a)) for k, a in expected_events)
    opened_id = next(a.id for _, a in before_events if a.stream_id == alert.stream_id)
    closes = [a for k, a in after_events if k == "closed" and a.stream_id == alert.stream_id]
    assert closes[0].id == opened_id  # the open alert itself came back


async def test_a_snapshot_file_reads_back_exactly_what_was_written(tmp_path: Path) -> None:
    settings, series = make_settings(tmp_path), spiky_series()
    cut, alert = cut_inside_an_alert((await reference_run(settings, series))[1])
    path = tmp_path / "state.snapshot"
    await _take_snapshot(settings, path, series, cut)
    first = read_snapshot(path)
    write_snapshot(path, first)
    assert path.read_bytes()[:8] == b"SWSNAP\r\n"
    again = read_snapshot(path)
    assert again.taken_at == first.taken_at and again.sha256 == first.sha256
    (a,), (b,) = first.batches, again.batches
    assert a.stream_ids == b.stream_ids and a.records.tobytes() == b.records.tobytes()
    assert a.open_alerts == b.open_alerts and a.last_alerts == b.last_alerts
    assert list(a.open_alerts) == [alert.stream_id]


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _not_a_snapshot(path: Path) -> None:
    path.write_text("{\"streams\": []}\n" * 10)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate, _not_a_snapshot, _empty],
                         ids=lambda f: f.__name__.strip("_"))
async def test_a_damaged_snapshot_is_set_aside_with_a_log_line_and_every_stream_starts_clean(
    tmp_path: Path, damage, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    path = tmp_path / "state.snapshot"
    await _take_snapshot(settings, path, spiky_series(n_streams=2), 50)
    damage(path)
    registry = ModelRegistry.load(settings.model)
    engine = Engine(registry, settings, lambda _: None)
    with caplog.at_level(logging.ERROR, logger="service.store.snapshot"):
        report = restore_snapshot(path, engine, registry)
    assert report.status == "set_aside" and report.streams == 0
    assert report.set_aside_as is not None
    assert report.set_aside_as.startswith("state.snapshot.corrupt-")
    assert not path.exists() and (tmp_path / report.set_aside_as).exists()
    assert "set aside as state.snapshot.corrupt-" in caplog.text
    assert engine.stream_ids(None, 10) == ([], None)


async def test_a_snapshot_made_for_another_onnx_file_is_set_aside_not_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    path = tmp_path / "state.snapshot"
    await _take_snapshot(settings, path, spiky_series(n_streams=2), 50)
    snapshot = read_snapshot(path)
    write_snapshot(path, Snapshot(snapshot.taken_at, snapshot.batches, {"default": "ab" * 32}))
    registry = ModelRegistry.load(settings.model)
    engine = Engine(registry, settings, lambda _: None)
    with caplog.at_level(logging.ERROR, logger="service.store.snapshot"):
        report = restore_snapshot(path, engine, registry)
    assert report.status == "set_aside" and "ONNX sha256 abababababab" in report.detail
    assert report.set_aside_as is not None and ".mismatch-" in report.set_aside_as
    assert "those streams start clean" in caplog.text
    assert engine.stream_ids(None, 10) == ([], None)


async def test_a_snapshot_of_another_per_stream_layout_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.snapshot"
    await _take_snapshot(make_settings(tmp_path), path, spiky_series(n_streams=2), 50)
    wider = make_settings(tmp_path, scoring={"window": 40})
    registry = ModelRegistry.load(wider.model)
    engine = Engine(registry, wider, lambda _: None)
    report = restore_snapshot(path, engine, registry)
    assert report.status == "set_aside" and "layout changed" in report.detail


async def test_more_streams_than_max_streams_are_set_aside_rather_than_cut(tmp_path: Path) -> None:
    path = tmp_path / "state.snapshot"
    await _take_snapshot(make_settings(tmp_path), path, spiky_series(n_streams=3), 20)
    small = make_settings(tmp_path, state={"max_streams": 2, "initial_capacity": 1})
    registry = ModelRegistry.load(small.model)
    engine = Engine(registry, small, lambda _: None)
    report = restore_snapshot(path, engine, registry)
    assert report.status == "set_aside" and "max_streams=2" in report.detail


async def test_one_model_set_aside_leaves_the_other_models_streams_restored(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS_DIR / "default", models / "default")
    shutil.copytree(MODELS_DIR / "default", models / "fans")
    settings = make_settings(tmp_path, model={"dir": models,
                                              "routes": [{"pattern": "fan-*", "model": "fans"}]})
    series = {"pump-1": spiky_series(1)["pump-0"], "fan-1": spiky_series(1)["pump-0"]}
    path = tmp_path / "state.snapshot"
    states = await _take_snapshot(settings, path, series, 60)
    snapshot = read_snapshot(path)
    write_snapshot(path, Snapshot(snapshot.taken_at, snapshot.batches,
                                  {**snapshot.sha256, "fans": "00" * 32}))
    registry = ModelRegistry.load(settings.model)
    engine = Engine(registry, settings, lambda _: None)
    report = restore_snapshot(path, engine, registry)
    assert (report.status, report.streams) == ("partial", 1)
    assert "model 'fans'" in report.detail
    assert engine.stream_ids(None, 10)[0] == ["pump-1"]
    _assert_same_state(stream_state(engine, "pump-1"), states["pump-1"])


async def test_a_failed_write_leaves_the_previous_snapshot_whole(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    path = tmp_path / "state.snapshot"
    await _take_snapshot(settings, path, spiky_series(n_streams=2), 30)
    good = path.read_bytes()
    (tmp_path / "state.snapshot.tmp").mkdir()  # the temp file cannot be created
    with pytest.raises(IsADirectoryError):
        write_snapshot(path, read_snapshot(path))
    assert path.read_bytes() == good


async def test_the_snapshotter_writes_on_its_interval_only_when_something_changed_and_at_stop(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    path = tmp_path / "state.snapshot"
    registry = ModelRegistry.load(settings.model)
    async with running_engine(settings) as engine:
        snapshotter = Snapshotter(path, engine, registry, interval_s=0.02)
        await snapshotter.start()
        await engine.submit(readings_of("pump-1", np.ones(5)))
        deadline = time.monotonic() + 5
        while snapshotter.count == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert snapshotter.count == 1 and snapshotter.error is None
        await asyncio.sleep(0.1)
        assert snapshotter.count == 1  # nothing changed since
        await engine.submit(readings_of("pump-1", np.ones(1), start=5))
        await snapshotter.stop()
        state = stream_state(engine, "pump-1")
    (batch,) = read_snapshot(path).batches
    assert batch.stream_ids == ["pump-1"] and batch.records["seen"][0] == state["seen"] == 6
    assert snapshotter.status()["pause_s"] is not None


def _alert(alert_id: str, stream_id: str) -> Alert:
    return Alert(id=alert_id, stream_id=stream_id, model="default", opened_at=10.0,
                 closed_at=None, peak_score=0.9999, peak_at=12.0, readings=3,
                 forecast_at_peak=[1.0], actual_at_peak=[9.0])


async def test_alerts_open_in_the_log_but_not_in_the_restored_state_are_closed_at_start(
    tmp_path: Path,
) -> None:
    settings, series = make_settings(tmp_path), spiky_series()
    cut, _ = cut_inside_an_alert((await reference_run(settings, series))[1])
    path = tmp_path / "state.snapshot"
    await _take_snapshot(settings, path, series, cut)  # one stream holds an open alert
    held = next(iter(read_snapshot(path).batches[0].open_alerts.values()))
    alert_log = SqliteAlertLog(tmp_path / "alerts.sqlite3", limit=100)
    alert_log.extend([("opened", held), ("opened", _alert("late", "pump-3"))])
    registry = ModelRegistry.load(settings.model)
    store = LocalStore("sqlite", alert_log, path, registry, 60.0)
    store.restore(Engine(registry, settings, lambda _: None))
    assert [a.id for a in alert_log.open_alerts()] == [held.id]
    (closed,), _ = alert_log.alerts(open_only=False)
    assert closed.id == "late" and closed.closed_at == closed.peak_at == 12.0
    assert [e.event for e in alert_log.events_after(0)] == ["opened", "opened", "closed"]
    alert_log.close()

