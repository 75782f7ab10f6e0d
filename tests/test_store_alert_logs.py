"""Every alert log keeps one contract: the in-memory one, SQLite and Redis answer alike."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.alerts import Alert, AlertLog, MemoryAlertLog
from service.settings import StoreSettings
from service.store.redis import RedisAlertLog, connect
from service.store.sqlite import SqliteAlertLog
from tests.store_support import REDIS_URL, redis_prefix  # noqa: F401 - a fixture

OpenLog = Callable[[], AlertLog]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenLog]:
    """Opens the backend's log (again: a second call reopens the same data)."""
    opened: list[AlertLog] = []

    def factory() -> AlertLog:
        if request.param == "memory":
            log: AlertLog = opened[0] if opened else MemoryAlertLog(limit=100)
        elif request.param == "sqlite":
            log = SqliteAlertLog(tmp_path / "alerts.sqlite3", limit=100)
        else:
            prefix = request.getfixturevalue("redis_prefix")
            client = connect(StoreSettings(redis_url=REDIS_URL))
            log = RedisAlertLog(client, prefix, limit=100)
            request.addfinalizer(client.close)
        opened.append(log)
        return log

    yield factory
    for log in opened:
        log.close()


def _alert(i: int, stream: str = "pump-1", score: float = 0.99999,
           closed: float | None = None, opened_at: float | None = None) -> Alert:
    at = float(i) if opened_at is None else opened_at
    return Alert(id=f"a{i}", stream_id=stream, model="default", opened_at=at,
                 closed_at=closed, peak_score=score, peak_at=at + 0.5, readings=2,
                 forecast_at_peak=[1.0, None], actual_at_peak=[9.0, 1 / 3])


def test_events_are_numbered_in_order_and_read_back_exactly(open_log: OpenLog) -> None:
    log = open_log()
    written = log.extend([("opened", _alert(1)), ("opened", _alert(2)),
                          ("closed", _alert(1, closed=7.25))])
    assert [e.seq for e in written] == sorted(e.seq for e in written)
    assert len({e.seq for e in written}) == 3
    replayed = list(log.events_after(0))
    assert replayed == written  # floats, None in lists, the lot
    assert list(log.events_after(written[1].seq)) == written[2:]
    assert list(log.events_after(written[2].seq)) == []


def test_history_pages_newest_change_first_with_the_latest_version(open_log: OpenLog) -> None:
    log = open_log()
    for i in range(5):
        log.append("opened", _alert(i))
    log.append("closed", _alert(1, closed=7.0))
    page, cursor = log.alerts(limit=2)
    assert [a.id for a in page] == ["a1", "a4"] and cursor == "a4"
    assert page[0].closed_at == 7.0
    rest, end = log.alerts(before_id=cursor, limit=10)
    assert [a.id for a in rest] == ["a3", "a2", "a0"] and end is None
    assert log.alerts(before_id="no-such-alert") == ([], None)


def test_history_filters_by_stream_glob_opening_time_and_openness(open_log: OpenLog) -> None:
    log = open_log()
    log.extend([("opened", _alert(1, stream="pump-1")), ("opened", _alert(2, stream="fan-1")),
                ("opened", _alert(3, stream="pump-[2]")), ("opened", _alert(4, stream="pump-2")),
                ("closed", _alert(4, stream="pump-2", closed=9.0))])
    ids = lambda **kw: [a.id for a in log.alerts(**kw)[0]]  # noqa: E731
    assert ids(stream="pump-*") == ["a4", "a3", "a1"]
    assert ids(stream="pump-[2]") == ["a4"]  # a glob, as fnmatch reads it
    assert ids(stream="PUMP-*") == []  # case-sensitive
    assert ids(since=2.0) == ["a4", "a3", "a2"]
    assert ids(open_only=True) == ["a3", "a2", "a1"] and ids(open_only=False) == ["a4"]
    page, cursor = log.alerts(stream="pump-*", open_only=True, limit=1)
    assert [a.id for a in page] == ["a3"]
    assert [a.id for a in log.alerts(stream="pump-*", open_only=True, before_id=cursor)[0]] == [
        "a1"]


def test_open_alerts_are_those_whose_last_event_opened_them(open_log: OpenLog) -> None:
    log = open_log()
    log.extend([("opened", _alert(1)), ("opened", _alert(2)), ("closed", _alert(1, closed=3.0))])
    assert [a.id for a in log.open_alerts()] == ["a2"]


def test_a_reopened_log_has_every_event_and_numbers_on(open_log: OpenLog) -> None:
    first = open_log()
    written = first.extend([("opened", _alert(1)), ("closed", _alert(1, closed=2.0))])
    again = open_log()
    assert list(again.events_after(0)) == written
    (later,) = again.extend([("opened", _alert(2))])
    assert later.seq > written[-1].seq
    assert [a.id for a in again.alerts()[0]] == ["a2", "a1"]
