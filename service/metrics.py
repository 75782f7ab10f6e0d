"""Prometheus collectors: what the engine, the alerts, the snapshots and the API are doing.

One `Metrics` per app, with a `CollectorRegistry` of its own. The engine reports once per
round (`stepped`, `refused`, `round_done`: a few counter and histogram updates, one pass over
the round's outcomes); levels such as queue depth and live streams are read when scraped.

>>> metrics = Metrics()
>>> metrics.snapshot_written(0.25)
>>> b"streamwatch_snapshot_seconds_count 1.0" in metrics.render()[0]
True
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.alerts import Alert
from service.errors import StreamwatchError
from service.results import ANOMALY, ResultBlock

if TYPE_CHECKING:
    from service.alerts import AlertBus
    from service.engine import Engine

UNBOUND = ""  # the model label of readings refused before a model was chosen
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_STEP_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
_SNAPSHOT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Metrics:
    """The server's collectors; the engine's observer; the hooks snapshots and requests call."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._readings = Counter(
            "streamwatch_readings",
            "Readings by model and outcome (ok, duplicate, or the problem slug of a refusal).",
            ["model", "outcome"],
            registry=r,
        )
        self._anomalies = Counter(
            "streamwatch_anomalies",
            "Readings scored at or over their threshold.",
            ["model"],
            registry=r,
        )
        self._alerts_opened = Counter(
            "streamwatch_alerts_opened", "Alerts opened.", ["model"], registry=r
        )
        self._round_size = Histogram(
            "streamwatch_batch_readings",
            "Readings per engine round (micro-batch).",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self._step_seconds = Histogram(
            "streamwatch_step_seconds",
            "One model's share of a round: gather, model call, score, scatter.",
            ["model"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self._snapshot_seconds = Histogram(
            "streamwatch_snapshot_seconds",
            "Time to write a state snapshot.",
            buckets=_SNAPSHOT_BUCKETS,
            registry=r,
        )
        self._snapshot_failures = Counter(
            "streamwatch_snapshot_failures", "Snapshots that could not be written.", registry=r
        )
        self._http_requests = Counter(
            "streamwatch_http_requests",
            "HTTP requests by method, route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self._http_seconds = Histogram(
            "streamwatch_http_request_seconds",
            "HTTP request duration by route.",
            ["route"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self._http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._last_snapshot = time.time()  # before the first snapshot: since the start
        self._levels = _Levels(self)
        self.registry.register(self._levels)

    # -- the engine, once per round ---------------------------------------------------------

    def stepped(self, model: str, block: ResultBlock, seconds: float) -> None:
        """One model's share of a round: its latency, and its results counted from columns."""
        self._step_seconds.labels(model).observe(seconds)
        n, errors = len(block), block.errors
        applied = np.ones(n, np.bool_)
        if errors:
            applied[list(errors)] = False
        duplicate = int(np.count_nonzero(block.duplicate & applied))
        ok = int(np.count_nonzero(applied)) - duplicate
        anomalies = int(np.count_nonzero(
            ((block.results["last_flags"] & ANOMALY) != 0) & applied & ~block.duplicate
        ))
        refused: dict[str, int] = {}
        for error in errors.values():
            refused[error.slug] = refused.get(error.slug, 0) + 1
        if ok:
            self._readings.labels(model, "ok").inc(ok)
        if duplicate:
            self._readings.labels(model, "duplicate").inc(duplicate)
        if anomalies:
            self._anomalies.labels(model).inc(anomalies)
        for slug, count in refused.items():
            self._readings.labels(model, slug).inc(count)

    def refused(self, errors: Sequence[StreamwatchError]) -> None:
        """Readings refused before any model took them (malformed, unknown model, full)."""
        counts: dict[str, int] = {}
        for error in errors:
            counts[error.slug] = counts.get(error.slug, 0) + 1
        for slug, n in counts.items():
            self._readings.labels(UNBOUND, slug).inc(n)

    def round_done(self, size: int, events: Sequence[tuple[str, Alert]]) -> None:
        self._round_size.observe(size)
        for kind, alert in events:
            if kind == "opened":
                self._alerts_opened.labels(alert.model).inc()

    # -- snapshots (called by the store) ----------------------------------------------------

    def snapshot_written(self, duration_s: float) -> None:
        """A snapshot is durable: it took `duration_s`; the snapshot age starts again."""
        self._snapshot_seconds.observe(duration_s)
        self._last_snapshot = time.time()

    def snapshot_failed(self) -> None:
        self._snapshot_failures.inc()

    @property
    def snapshot_age_s(self) -> float:
        """Seconds since the last snapshot (or since the start, before the first)."""
        return max(0.0, time.time() - self._last_snapshot)

    # -- requests ---------------------------------------------------------------------------

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        # The children are kept: `labels()` validates and locks on every call, which doubled
        # the cost of this (3.7 us against 1.8). Their number is bounded as the labels are.
        key = (method, route, status)
        children = self._http_children.get(key)
        if children is None:
            children = self._http_children[key] = (
                self._http_requests.labels(method, route, str(status)),
                self._http_seconds.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    # -- scraping ---------------------------------------------------------------------------

    def watch(self, engine: Engine, bus: AlertBus) -> None:
        """Read levels (queue, streams, open alerts, evictions, drops) from these at scrape."""
        self._levels.engine, self._levels.bus = engine, bus

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Levels:
    """Values read when scraped, so the hot path pays nothing for them."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.engine: Engine | None = None
        self.bus: AlertBus | None = None

    def collect(self) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            "streamwatch_snapshot_age_seconds",
            "Seconds since the last state snapshot (since the start, before the first).",
        )
        age.add_metric([], self._metrics.snapshot_age_s)
        yield age
        if self.engine is not None:
            yield from _engine_levels(self.engine)
        if self.bus is not None:
            dropped = CounterMetricFamily(
                "streamwatch_subscriber_dropped_events",
                "Alert events dropped because a subscriber read too slowly.",
            )
            dropped.add_metric([], self.bus.dropped_total)
            yield dropped


def _engine_levels(engine: Engine) -> Iterator[Metric]:
    queued = GaugeMetricFamily("streamwatch_queue_depth", "Readings waiting for a round.")
    queued.add_metric([], engine.queued)
    yield queued
    live = GaugeMetricFamily("streamwatch_live_streams", "Streams with state.", labels=["model"])
    open_alerts = GaugeMetricFamily("streamwatch_alerts_open", "Alerts open now.", labels=["model"])
    evictions = CounterMetricFamily(
        "streamwatch_evictions",
        "Streams forgotten for being idle past the TTL.",
        labels=["model"],
    )
    for name, stepper in engine.steppers().items():
        live.add_metric([name], len(stepper.arena))
        open_alerts.add_metric([name], stepper.open_alerts)
        evictions.add_metric([name], stepper.evictions)
    yield from (live, open_alerts, evictions)
