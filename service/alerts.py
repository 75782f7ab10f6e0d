"""Alerts: the records, the bus that fans events out to live subscribers, and the alert log.

An alert opens and closes; each is an `AlertEvent` with a sequence number. Events go to the
log first (so `GET /v1/alerts` and a resuming subscriber see them), then to the bus. A
subscriber's queue is bounded: when it is full the oldest event is dropped and counted, and
ingestion never waits for a slow reader.
"""

from __future__ import annotations

import abc
import asyncio
import fnmatch
import functools
import itertools
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from service.errors import CapacityError


# A fleet's readings mostly share their timestamps (streams sampled on the same clock), and
# formatting one costs ~3 us against ~0.3 us for a cached one.
@functools.lru_cache(maxsize=4096)
def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    stream_id: str
    model: str
    opened_at: float
    closed_at: float | None
    peak_score: float
    peak_at: float
    readings: int
    forecast_at_peak: list[float | None]
    actual_at_peak: list[float | None]

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "stream_id": self.stream_id,
            "model": self.model,
            "opened_at": iso(self.opened_at),
            "closed_at": None if self.closed_at is None else iso(self.closed_at),
            "open": self.is_open,
            "peak_score": self.peak_score,
            "peak_at": iso(self.peak_at),
            "readings": self.readings,
            "forecast_at_peak": self.forecast_at_peak,
            "actual_at_peak": self.actual_at_peak,
        }


EventKind = Literal["opened", "closed"]


@dataclass(frozen=True, slots=True)
class AlertEvent:
    seq: int
    event: EventKind
    alert: Alert

    def to_json(self) -> dict[str, object]:
        return {"seq": self.seq, "event": self.event, "alert": self.alert.to_json()}


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """Which alerts `AlertLog.alerts` returns: a page of them, newest change first."""

    stream: str | None = None  # a glob over stream ids
    since: float | None = None  # opened at or after (epoch seconds)
    open_only: bool | None = None  # True: open ones; False: closed ones; None: both
    before_id: str | None = None  # the cursor: start after this alert
    limit: int = 100

    def matches(self, alert: Alert) -> bool:
        """Whether the alert passes the filters (the cursor and limit aside)."""
        return (
            (self.stream is None or fnmatch.fnmatchcase(alert.stream_id, self.stream))
            and (self.since is None or alert.opened_at >= self.since)
            and (self.open_only is None or alert.is_open == self.open_only)
        )


class AlertLog(abc.ABC):
    """Every alert event, in order, under a sequence number; the latest version of each alert.

    The engine hands each round's events to `extend` (one write, durable when it returns)
    before anyone hears of them. Here: `MemoryAlertLog`, which forgets on restart; durable
    ones live in `service.store` (SQLite, Redis).
    """

    @abc.abstractmethod
    def extend(self, events: Sequence[tuple[EventKind, Alert]]) -> list[AlertEvent]:
        """Append events in one write; returns them numbered, in the order given."""

    def append(self, event: EventKind, alert: Alert) -> AlertEvent:
        return self.extend([(event, alert)])[0]

    @abc.abstractmethod
    def events_after(self, seq: int) -> Iterator[AlertEvent]:
        """The events numbered after `seq`, oldest first (a resuming subscriber's replay)."""

    def alerts(
        self,
        *,
        stream: str | None = None,
        since: float | None = None,
        open_only: bool | None = None,
        before_id: str | None = None,
        limit: int = 100,
    ) -> tuple[list[Alert], str | None]:
        """The latest version of each alert, last changed first; the cursor is the id of
        the last alert returned when more follow."""
        return self.page(AlertQuery(stream, since, open_only, before_id, limit))

    @abc.abstractmethod
    def page(self, query: AlertQuery) -> tuple[list[Alert], str | None]:
        """`alerts`, for one query: what each backend implements."""

    @abc.abstractmethod
    def open_alerts(self) -> list[Alert]:
        """Every alert whose latest event is `opened`."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release files or connections."""


class MemoryAlertLog(AlertLog):
    """The in-memory log: forgets on restart and keeps at most `limit` alerts."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._events: deque[AlertEvent] = deque(maxlen=2 * limit)
        self._alerts: OrderedDict[str, Alert] = OrderedDict()
        self._seq = itertools.count(1)

    def extend(self, events: Sequence[tuple[EventKind, Alert]]) -> list[AlertEvent]:
        return [self._append(event, alert) for event, alert in events]

    def _append(self, event: EventKind, alert: Alert) -> AlertEvent:
        record = AlertEvent(next(self._seq), event, alert)
        self._events.append(record)
        self._alerts[alert.id] = alert
        self._alerts.move_to_end(alert.id)
        while len(self._alerts) > self._limit:
            self._alerts.popitem(last=False)
        return record

    def open_alerts(self) -> list[Alert]:
        return [alert for alert in self._alerts.values() if alert.is_open]

    def close(self) -> None:
        """Nothing to release."""

    def events_after(self, seq: int) -> Iterator[AlertEvent]:
        return (e for e in self._events if e.seq > seq)

    def page(self, query: AlertQuery) -> tuple[list[Alert], str | None]:
        found: list[Alert] = []
        started = query.before_id is None
        for alert in reversed(self._alerts.values()):
            if not started:
                started = alert.id == query.before_id
                continue
            if not query.matches(alert):
                continue
            if len(found) == query.limit:
                return found, found[-1].id
            found.append(alert)
        return found, None


@dataclass(frozen=True)
class AlertFilter:
    stream: str = "*"
    min_score: float = 0.0

    def matches(self, event: AlertEvent) -> bool:
        return event.alert.peak_score >= self.min_score and fnmatch.fnmatchcase(
            event.alert.stream_id, self.stream
        )


class Subscription:
    """One live subscriber: a bounded queue; overflow drops the oldest and counts it."""

    def __init__(self, alert_filter: AlertFilter, size: int) -> None:
        self.filter = alert_filter
        self.dropped = 0
        self._events: deque[AlertEvent] = deque(maxlen=size)
        self._ready = asyncio.Event()

    def offer(self, event: AlertEvent) -> None:
        if not self.filter.matches(event):
            return
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
        self._events.append(event)
        self._ready.set()

    async def next_batch(self) -> tuple[list[AlertEvent], int]:
        """Wait for events; returns them and how many were dropped since the last call."""
        await self._ready.wait()
        self._ready.clear()
        events = list(self._events)
        self._events.clear()
        dropped, self.dropped = self.dropped, 0
        return events, dropped


class AlertBus:
    """Fans alert events out to at most `max_subscribers` live subscriptions."""

    def __init__(self, max_subscribers: int, queue_size: int) -> None:
        self._max = max_subscribers
        self._queue_size = queue_size
        self._subscriptions: set[Subscription] = set()
        self.dropped_total = 0

    def subscribe(self, alert_filter: AlertFilter) -> Subscription:
        if len(self._subscriptions) >= self._max:
            raise CapacityError(f"{self._max} alert subscribers are connected already")
        subscription = Subscription(alert_filter, self._queue_size)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def publish(self, event: AlertEvent) -> None:
        for subscription in self._subscriptions:
            before = subscription.dropped
            subscription.offer(event)
            self.dropped_total += subscription.dropped - before
