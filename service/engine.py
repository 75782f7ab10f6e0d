"""The engine: every reading from every entry point goes through one micro-batch loop.

`submit(readings)` queues them and returns their outcomes, in the caller's order. The loop
closes a round at `max_batch` readings or after `max_wait_ms`, taking at most one reading per
stream (a stream's later readings wait for the next round, so each stream's readings apply
strictly in order), and makes one model call per model per round (`service.stepper`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from service.alerts import Alert
from service.errors import (
    CapacityError,
    InvalidReadingError,
    ModelMismatchError,
    ShuttingDownError,
    StreamwatchError,
    UnknownStreamError,
)
from service.model import ModelCard
from service.registry import ModelRegistry
from service.settings import Settings
from service.state import ArenaLayout, StateArena
from service.stepper import Outcome, Reading, Stepper, StreamInfo

AlertSink = Callable[[list[tuple[str, Alert]]], None]


@dataclass(eq=False)
class _Job:
    readings: Sequence[Reading]
    future: asyncio.Future[list[Outcome]]
    outcomes: list[Outcome | None] = field(default_factory=list)
    remaining: int = 0


class Engine:
    """Micro-batches readings across streams and connections; owns every stream's state."""

    def __init__(self, registry: ModelRegistry, settings: Settings, on_alerts: AlertSink) -> None:
        self.registry = registry
        self._engine = settings.engine
        self._state_settings = settings.state
        self._on_alerts = on_alerts
        self._steppers = {
            name: Stepper(name, model, self._new_arena(model.card, settings), settings)
            for name, model in registry.models.items()
        }
        self._bound: dict[str, str] = {}  # stream_id -> model name
        self._pending: OrderedDict[str, deque[tuple[_Job, int]]] = OrderedDict()
        self._n_pending = 0
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.rounds = 0

    @staticmethod
    def _new_arena(card: ModelCard, settings: Settings) -> StateArena:
        layout = ArenaLayout(
            state_names=card.state_names,
            num_layers=card.num_layers,
            hidden_size=card.hidden_size,
            channels=card.n_channels,
            window=settings.scoring.window,
        )
        return StateArena(layout, settings.state.initial_capacity, settings.state.max_streams)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="streamwatch-engine")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def submit(self, readings: Sequence[Reading]) -> list[Outcome]:
        """Apply readings (in order per stream); one outcome per reading, in the same order."""
        if self._closing or self._task is None:
            raise ShuttingDownError("the engine is not running")
        if not readings:
            return []
        if self._n_pending + len(readings) > self._engine.max_queued:
            raise CapacityError(f"{self._n_pending} readings are queued already; retry shortly")
        job = _Job(readings, asyncio.get_running_loop().create_future())
        job.outcomes = [None] * len(readings)
        job.remaining = len(readings)
        pending = self._pending
        for index, reading in enumerate(readings):
            queue = pending.get(reading.stream_id)
            if queue is None:
                pending[reading.stream_id] = queue = deque()
            queue.append((job, index))
        self._n_pending += len(readings)
        self._wakeup.set()
        if self._n_pending >= self._engine.max_batch:
            self._full.set()
        return await job.future

    # -- the loop ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        backlog = False
        next_sweep = time.monotonic()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not backlog and self._n_pending < self._engine.max_batch:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._engine.max_wait_ms / 1000)
            self._run_round(self._take_round())
            backlog = bool(self._pending)
            ttl_s = self._state_settings.ttl_s
            if ttl_s is not None and time.monotonic() >= next_sweep:
                self._evict_idle(time.monotonic() - ttl_s)
                next_sweep = time.monotonic() + min(1.0, ttl_s / 2)
            await asyncio.sleep(0)  # let the callers whose readings are done run

    def _take_round(self) -> list[tuple[_Job, int]]:
        """The head reading of each waiting stream, oldest streams first, up to max_batch."""
        taken: list[tuple[_Job, int]] = []
        pending = self._pending
        for _ in range(min(len(pending), self._engine.max_batch)):
            stream_id, queue = pending.popitem(last=False)
            taken.append(queue.popleft())
            if queue:
                pending[stream_id] = queue  # to the back: streams take turns
        self._n_pending -= len(taken)
        return taken

    def _run_round(self, items: list[tuple[_Job, int]]) -> None:
        self.rounds += 1
        outcomes: list[Outcome | None] = [None] * len(items)
        by_model: dict[str, list[int]] = {}
        for i, (job, index) in enumerate(items):
            try:
                name = self._bind(job.readings[index])
            except StreamwatchError as error:
                outcomes[i] = error
                continue
            by_model.setdefault(name, []).append(i)
        events: list[tuple[str, Alert]] = []
        for name, rows in by_model.items():
            readings = [items[i][0].readings[items[i][1]] for i in rows]
            step = self._steppers[name].apply(readings)
            events.extend(step.events)
            for i, result in zip(rows, step.outcomes, strict=True):
                outcomes[i] = result
        if events:
            self._on_alerts(events)  # durable before anyone hears of it
        for (job, index), outcome in zip(items, outcomes, strict=True):
            job.outcomes[index] = outcome
            job.remaining -= 1
            if job.remaining == 0 and not job.future.done():
                job.future.set_result(job.outcomes)  # type: ignore[arg-type]

    def _bind(self, reading: Reading) -> str:
        """The model this reading's stream is bound to, binding a new stream if valid."""
        bound = self._bound.get(reading.stream_id)
        if bound is not None:
            if reading.model is not None and reading.model != bound:
                raise ModelMismatchError(
                    f"stream {reading.stream_id!r} is bound to model {bound!r}, "
                    f"not {reading.model!r}; delete the stream to rebind it"
                )
            name = bound
        else:
            name = self.registry.model_for(reading.stream_id, reading.model)
        channels = self.registry.get(name).card.n_channels
        if len(reading.values) != channels:
            raise InvalidReadingError(
                f"model {name!r} takes {channels} channel(s), the reading has {len(reading.values)}"
            )
        if bound is None:
            self._steppers[name].bind(reading.stream_id)
            self._bound[reading.stream_id] = name
        return name

    # -- streams ----------------------------------------------------------------------------

    def forget(self, stream_id: str) -> None:
        """Drop a stream's state; an open alert closes. Its next reading starts it afresh."""
        name = self._bound.pop(stream_id, None)
        if name is None:
            raise UnknownStreamError(f"no stream {stream_id!r}")
        events = self._steppers[name].release(stream_id)
        if events:
            self._on_alerts(events)

    def _evict_idle(self, cutoff: float) -> None:
        for stepper in self._steppers.values():
            for stream_id in stepper.arena.idle_since(cutoff):
                self.forget(stream_id)
                stepper.evictions += 1

    def stream_info(self, stream_id: str) -> StreamInfo:
        name = self._bound.get(stream_id)
        if name is None:
            raise UnknownStreamError(f"no stream {stream_id!r}")
        return self._steppers[name].info(stream_id)

    def stream_ids(self, after: str | None, limit: int) -> tuple[list[str], str | None]:
        """Stream ids in sorted order after the cursor `after`; the next cursor or None."""
        ids = sorted(self._bound)
        start = 0 if after is None else int(np.searchsorted(np.array(ids), after, "right"))
        page = ids[start : start + limit]
        more = start + limit < len(ids)
        return page, (page[-1] if more and page else None)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    @property
    def queued(self) -> int:
        return self._n_pending

    @property
    def live_streams(self) -> dict[str, int]:
        return {name: len(stepper.arena) for name, stepper in self._steppers.items()}

    def steppers(self) -> dict[str, Stepper]:
        return self._steppers
