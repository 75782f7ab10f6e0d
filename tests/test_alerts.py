"""The alert bus and the in-memory alert log."""

from __future__ import annotations

import pytest

from service.alerts import Alert, AlertBus, AlertFilter, MemoryAlertLog
from service.errors import CapacityError

pytestmark = pytest.mark.anyio


def _alert(i: int, stream: str = "pump-1", score: float = 0.99999,
           closed: float | None = None) -> Alert:
    return Alert(id=f"a{i}", stream_id=stream, model="default", opened_at=float(i),
                 closed_at=closed, peak_score=score, peak_at=float(i), readings=1,
                 forecast_at_peak=[1.0], actual_at_peak=[9.0])


async def test_a_slow_subscriber_loses_its_oldest_events_and_is_told_how_many() -> None:
    bus, log = AlertBus(max_subscribers=2, queue_size=3), MemoryAlertLog(limit=100)
    slow = bus.subscribe(AlertFilter())
    for i in range(5):
        bus.publish(log.append("opened", _alert(i)))
    events, dropped = await slow.next_batch()
    assert [e.alert.id for e in events] == ["a2", "a3", "a4"] and dropped == 2
    assert bus.dropped_total == 2


async def test_subscribers_get_only_what_their_filter_matches() -> None:
    bus, log = AlertBus(max_subscribers=2, queue_size=10), MemoryAlertLog(limit=100)
    pumps = bus.subscribe(AlertFilter(stream="pump-*", min_score=0.999))
    bus.publish(log.append("opened", _alert(1, stream="fan-1")))
    bus.publish(log.append("opened", _alert(2, stream="pump-2", score=0.9)))
    bus.publish(log.append("opened", _alert(3, stream="pump-3")))
    events, _ = await pumps.next_batch()
    assert [e.alert.id for e in events] == ["a3"]


def test_subscribers_are_capped() -> None:
    bus = AlertBus(max_subscribers=1, queue_size=10)
    bus.subscribe(AlertFilter())
    with pytest.raises(CapacityError):
        bus.subscribe(AlertFilter())


def test_the_log_pages_newest_first_and_keeps_the_latest_version() -> None:
    log = MemoryAlertLog(limit=100)
    for i in range(5):
        log.append("opened", _alert(i))
    log.append("closed", _alert(1, closed=7.0))
    page, cursor = log.alerts(limit=2)
    assert [a.id for a in page] == ["a1", "a4"] and cursor == "a4"
    rest, end = log.alerts(before_id=cursor, limit=10)
    assert [a.id for a in rest] == ["a3", "a2", "a0"] and end is None
    assert [a.id for a in log.alerts(open_only=False)[0]] == ["a1"]
    assert [e.seq for e in log.events_after(4)] == [5, 6]
