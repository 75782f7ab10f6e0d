"""The engine: every reading from every entry point goes through one micro-batch loop.

`submit(readings)` queues them and returns their outcomes, in the caller's order. The loop
closes a round at `max_batch` readings or after `max_wait_ms`, taking at most one reading per
stream (a stream's later readings wait for the next round, so each stream's readings apply
strictly in order), and makes one model call per model per round (`service.stepper`). Which
model and slot each stream has is `service.directory`'s business.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol

import numpy as np

from service.alerts import Alert
from service.directory import StreamDirectory
from service.errors import (
    CapacityError,
    RoundFailedError,
    ShuttingDownError,
    StoreUnavailableError,
    StreamwatchError,
    UnknownStreamError,
)
from service.registry import ModelRegistry
from service.results import Outcome, Reading, ReadingArrays, ResultBlock, ResultRuns
from service.settings import Settings
from service.stepper import Stepper, StreamInfo
from service.stream_batch import StateCopy, StreamBatch

log = logging.getLogger(__name__)

AlertSink = Callable[[list[tuple[str, Alert]]], None]


class SharedState(Protocol):
    """Streams' state kept outside this process between rounds, shared by replicas (Redis).

    Each round loads its streams before stepping and saves them after: one round trip each.
    """

    def load(self, stream_ids: Sequence[str]) -> list[StreamBatch]:
        """The stored state of those of `stream_ids` that have any, one batch per model."""
        ...

    def save(self, batches: Sequence[StreamBatch]) -> None: ...

    def delete(self, stream_id: str) -> None: ...


class EngineObserver(Protocol):
    """Told what each round did (metrics); called once per round and model, so keep it cheap."""

    def stepped(self, model: str, block: ResultBlock, seconds: float) -> None: ...

    def refused(self, errors: Sequence[StreamwatchError]) -> None: ...

    def round_done(self, size: int, events: Sequence[tuple[str, Alert]]) -> None: ...


_Waiting = tuple["_Job", int]  # a reading waiting for its round: its job, its index there


@dataclass(eq=False)
class _Job:
    readings: Sequence[Reading]
    future: asyncio.Future[Any]
    outcomes: list[Outcome | None] = field(default_factory=list)
    remaining: int = 0

    def done(self) -> None:
        if not self.future.done():
            self.future.set_result(self.outcomes)


@dataclass(eq=False, kw_only=True)
class _ColumnsJob(_Job):
    """Readings of distinct streams that came as columns. Rounds take them a run at a time,
    in order (`taken` so far), and keep their results as blocks (`parts`); a round that could
    not take them as columns settles them one by one in `outcomes`, like a `_Job`'s."""

    columns: ReadingArrays
    taken: int = 0
    parts: list[tuple[ResultBlock, int, int, int]] = field(default_factory=list)

    def as_readings(self) -> None:
        """Ready to be settled one reading at a time."""
        if not self.readings:
            self.readings = self.columns.readings()
            self.outcomes = [None] * len(self.readings)

    def done(self) -> None:
        if self.future.done():
            return
        if not self.readings:  # every reading went as columns: the usual case
            self.future.set_result(ResultRuns(self.parts))
            return
        for block, row, start, stop in self.parts:
            self.outcomes[start:stop] = block.outcomes(row, row + stop - start)
        self.future.set_result(self.outcomes)


class Engine:
    """Micro-batches readings across streams and connections; owns every stream's state."""

    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        on_alerts: AlertSink,
        observer: EngineObserver | None = None,
        shared: SharedState | None = None,
    ) -> None:
        self.registry = registry
        self._observer = observer
        self._shared = shared
        self._engine = settings.engine
        self._state_settings = settings.state
        self._on_alerts = on_alerts
        self._streams = StreamDirectory(registry, settings)
        # stream_id -> its next waiting reading, oldest stream first; its later readings wait
        # in `_later`. Most streams have one, and a deque per reading costs more than the
        # rest of submit(); with heads apart, a round is taken by C-level slicing.
        self._pending: OrderedDict[str, _Waiting] = OrderedDict()
        self._later: dict[str, deque[_Waiting]] = {}
        # Jobs of columns, in arrival order, of streams with no reading in `_pending`: a round
        # takes runs of them whole (`_take_columns`); rounds of these and of `_pending` take
        # turns. Readings that come one by one meanwhile wait in `_after_columns` until these
        # are done, so each stream's stay in order.
        self._columns: deque[_ColumnsJob] = deque()
        self._after_columns: list[_Job] = []
        self._n_pending = 0
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Held, not looked up per future: asyncio.get_running_loop() costs a getpid() each
        # time, 1.7% of the server's CPU at one reading per WebSocket frame (py-spy).
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.rounds = 0

    async def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._loop(), name="streamwatch-engine")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def submit(self, readings: Sequence[Reading]) -> list[Outcome]:
        """Apply readings (in order per stream); one outcome per reading, in the same order."""
        return await self.enqueue(readings)

    def enqueue(self, readings: Sequence[Reading]) -> asyncio.Future[list[Outcome]]:
        """Queue readings now; the future gets what `submit` returns. For a caller that must
        queue in arrival order and wait later (pipelined WebSocket frames) without a task."""
        job = _Job(readings, self._future())
        if not readings:
            job.future.set_result([])
            return job.future
        self._admit(len(readings))
        job.outcomes = [None] * len(readings)
        job.remaining = len(readings)
        if self._columns or self._after_columns:
            self._after_columns.append(job)
        else:
            self._queue(job)
        self._n_pending += len(readings)
        self._woken()
        return job.future

    def enqueue_columns(self, columns: ReadingArrays) -> asyncio.Future[Any]:
        """`enqueue` for readings sent as columns. The future gets their results as columns,
        `ResultRuns`, when they went through as such (readings of distinct streams, none of
        which names a model or has a reading queued one by one); else what `enqueue`'s
        gets."""
        n = len(columns)
        if (
            n == 0
            or columns.models is not None
            or self._shared is not None
            or self._after_columns
            # distinct streams: a list the arena remembers is (a set of 1,000 ids costs ~30 us)
            or (not self._streams.remembers(columns.stream_ids)
                and len(set(columns.stream_ids)) < n)
            or (self._pending and not self._pending.keys().isdisjoint(columns.stream_ids))
        ):
            return self.enqueue(columns.readings())
        job = _ColumnsJob((), self._future(), remaining=n, columns=columns)
        self._admit(n)
        self._columns.append(job)
        self._n_pending += n
        self._woken()
        return job.future

    def _future(self) -> asyncio.Future[Any]:
        loop = self._event_loop  # set when the engine starts
        if self._closing or loop is None:
            raise ShuttingDownError("the engine is not running")
        return loop.create_future()

    def _admit(self, n: int) -> None:
        if self._n_pending + n > self._engine.max_queued:
            raise CapacityError(f"{self._n_pending} readings are queued already; retry shortly")

    def _woken(self) -> None:
        self._wakeup.set()
        if self._n_pending >= self._engine.max_batch:
            self._full.set()

    def _queue(self, job: _Job) -> None:
        """Queue a job's readings each behind its stream's earlier ones."""
        pending, later = self._pending, self._later
        for index, reading in enumerate(job.readings):
            waiting = (job, index)
            if pending.setdefault(reading.stream_id, waiting) is not waiting:
                queue = later.get(reading.stream_id)
                if queue is None:
                    later[reading.stream_id] = deque((waiting,))
                else:
                    queue.append(waiting)

    # -- the loop ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        backlog = False
        next_sweep = time.monotonic()
        while True:
            if not self._columns and self._after_columns:
                for job in self._after_columns:
                    self._queue(job)
                self._after_columns.clear()
            if not self._pending and not self._columns:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not backlog and self._n_pending < self._engine.max_batch:
                # A timer that sets the event, not asyncio.wait_for: wait_for makes a task per
                # round, which costs more than a small round's Python work.
                self._full.clear()
                timer = loop.call_later(self._engine.max_wait_ms / 1000, self._full.set)
                await self._full.wait()
                timer.cancel()
            if self._columns and (not self._pending or self.rounds % 2):
                runs = self._take_columns()
                items = None
            else:
                items = self._take_round()
            try:
                if items is None:
                    self._run_columns_round(runs)
                else:
                    self._run_round(items)
            except Exception:  # one bad round must not stop the loop and strand every caller
                if items is None:
                    items = _one_by_one(runs)
                log.exception("engine round of %d readings failed", len(items))
                fault = RoundFailedError("the engine failed on this round; it was logged")
                self._settle(items, [fault] * len(items))
            backlog = bool(self._pending or self._columns)
            ttl_s = self._state_settings.ttl_s
            if ttl_s is not None and time.monotonic() >= next_sweep:
                self._evict_idle(time.monotonic() - ttl_s)
                next_sweep = time.monotonic() + min(1.0, ttl_s / 2)
            await asyncio.sleep(0)  # let the callers whose readings are done run

    def _take_round(self) -> list[tuple[_Job, int]]:
        """The head reading of each waiting stream, oldest streams first, up to max_batch."""
        pending, later = self._pending, self._later
        stream_ids = list(itertools.islice(pending, self._engine.max_batch))
        taken = list(map(pending.pop, stream_ids))
        moved = later.keys() & stream_ids if later else ()
        if moved:  # their next readings go to the back, in this round's order: turns
            for stream_id in stream_ids:
                if stream_id in moved:
                    queue = later[stream_id]
                    pending[stream_id] = queue.popleft()
                    if not queue:
                        del later[stream_id]
        self._n_pending -= len(taken)
        return taken

    def _take_columns(self) -> list[_Run]:
        """Runs of queued columns jobs, oldest first, up to max_batch readings: a job is
        taken (in part, if the round fills) unless it shares a stream with an earlier one
        still queued or taken this round. A job that would fill less than a quarter of a
        round in part waits whole for the next: its streams' slots are then one list, which
        a client that sends the same streams each time repeats (`StateArena.slots_of`)."""
        max_batch = self._engine.max_batch
        budget, runs = max_batch, list[_Run]()
        seen: set[str] = set()  # the streams of the jobs looked at so far
        for job in itertools.islice(self._columns, _LOOK_AHEAD):
            ids = job.columns.stream_ids
            rest = ids[job.taken :] if job.taken else ids
            if runs and len(rest) > budget and 4 * budget < max_batch:
                break
            if runs and not seen.isdisjoint(rest):
                seen.update(rest)
                continue
            stop = job.taken + min(budget, len(rest))
            runs.append((job, job.taken, stop))
            budget -= stop - job.taken
            job.taken = stop
            if budget == 0:
                break
            seen.update(rest)
        if any(job.taken == len(job.columns) for job, _, _ in runs):
            self._columns = deque(job for job in self._columns if job.taken < len(job.columns))
        self._n_pending -= max_batch - budget
        return runs

    def _run_columns_round(self, runs: list[_Run]) -> None:
        """A round of columns: with every stream bound to the one model, one step on the
        columns; otherwise the readings go one by one, as `_run_round` takes them."""
        run_ids = [job.columns.stream_ids[start:stop] for job, start, stop in runs]
        if len(runs) == 1:
            job, start, stop = runs[0]
            columns = job.columns
            stream_ids = run_ids[0]
            ts, x = columns.timestamps[start:stop], columns.values[start:stop]
        else:
            stream_ids = list(itertools.chain.from_iterable(run_ids))
            ts = np.concatenate([job.columns.timestamps[a:b] for job, a, b in runs])
            x = np.concatenate([job.columns.values[a:b] for job, a, b in runs])
        only = self._streams.only_model(x.shape[1])
        slots = None if only is None else self._slots_of_runs(only, run_ids)
        if only is None or slots is None:  # a new stream, or another model: one by one
            self._run_round(_one_by_one(runs))
            return
        self.rounds += 1
        started = time.perf_counter()
        step = self._streams.steppers[only].apply_columns(stream_ids, ts, x, slots)
        observer = self._observer
        if observer is not None:
            observer.stepped(only, step.block, time.perf_counter() - started)
        if step.events:
            try:
                self._on_alerts(step.events)  # durable before anyone hears of it
            except StoreUnavailableError as error:  # not kept, so not acknowledged
                items = _one_by_one(runs)
                self._settle(items, [error] * len(items))
                return
        if observer is not None:
            observer.round_done(len(stream_ids), step.events)
        row = 0
        for job, start, stop in runs:
            job.parts.append((step.block, row, start, stop))
            row += stop - start
            job.remaining -= stop - start
            if job.remaining == 0:
                job.done()

    def _slots_of_runs(self, model: str, run_ids: list[list[str]]) -> np.ndarray | None:
        """The slots of the round's runs' streams, or None if one is not bound to `model`.
        Each run is looked up as a list of its own: a job a round takes whole, from a client
        that sends the same streams each time, is a list whose slots the arena remembers."""
        parts = []
        for ids in run_ids:
            slots = self._streams.slots_of(model, ids)
            if slots is None:
                return None
            parts.append(slots)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run_round(self, items: list[tuple[_Job, int]]) -> None:
        self.rounds += 1
        if self._shared is not None:
            try:
                self._pull([job.readings[index].stream_id for job, index in items])
            except StoreUnavailableError as error:
                self._settle(items, [error] * len(items))
                return
        outcomes: list[Outcome | None] = [None] * len(items)
        round_readings = [job.readings[index] for job, index in items]
        unbound: list[StreamwatchError] = []
        by_model = self._streams.route(round_readings, outcomes, unbound)
        observer = self._observer
        events: list[tuple[str, Alert]] = []
        for name, (rows, slots) in by_model.items():
            whole = len(rows) == len(items)  # one model took every reading: no regrouping
            readings = round_readings if whole else [round_readings[i] for i in rows]
            started = time.perf_counter()
            slot_array = np.fromiter(slots, np.int64, len(slots))
            step = self._streams.steppers[name].apply(readings, slot_array)
            if observer is not None:
                observer.stepped(name, step.block, time.perf_counter() - started)
            events.extend(step.events)
            if whole:
                outcomes = step.block.outcomes()  # type: ignore[assignment]
            else:
                for i, result in zip(rows, step.block.outcomes(), strict=True):
                    outcomes[i] = result
        try:
            if events:
                self._on_alerts(events)  # durable before anyone hears of it
            if self._shared is not None:
                self._push(items, {name: rows for name, (rows, _) in by_model.items()})
        except StoreUnavailableError as error:
            outcomes = [error] * len(items)  # not kept, so not acknowledged
        if observer is not None:
            if unbound:
                observer.refused(unbound)
            observer.round_done(len(items), events)
        self._settle(items, outcomes)

    @staticmethod
    def _settle(items: list[tuple[_Job, int]], outcomes: Sequence[Outcome | None]) -> None:
        """Hand each reading's outcome to its job; a job's caller wakes when all are in."""
        for (job, index), outcome in zip(items, outcomes, strict=True):
            job.outcomes[index] = outcome
        settled: Counter[_Job] = Counter(map(itemgetter(0), items))  # C-level counting
        for job, done in settled.items():
            job.remaining -= done
            if job.remaining == 0:
                job.done()

    # -- streams ----------------------------------------------------------------------------

    def report_refused(self, errors: Sequence[StreamwatchError]) -> None:
        """Readings the edge refused before submitting them: counted like the engine's own."""
        if self._observer is not None and errors:
            self._observer.refused(errors)

    def forget(self, stream_id: str) -> None:
        """Drop a stream's state; an open alert closes. Its next reading starts it afresh."""
        if self._shared is not None:
            self._pull([stream_id])
        if stream_id not in self._streams:
            raise UnknownStreamError(f"no stream {stream_id!r}")
        if self._shared is not None:
            self._shared.delete(stream_id)  # first: if Redis fails, nothing changed here
        events = self._streams.release(stream_id)
        if events:
            self._on_alerts(events)

    def _evict_idle(self, cutoff: float) -> None:
        for stepper in self._streams.steppers.values():
            for stream_id in stepper.arena.idle_since(cutoff):
                if self._shared is None:
                    self.forget(stream_id)
                else:  # idle here, perhaps not on another replica: drop only this copy
                    self._streams.release(stream_id)
                stepper.evictions += 1

    # -- persistence ------------------------------------------------------------------------

    def snapshot(self) -> list[StateCopy]:
        """Copies of every model's streams; taken between rounds, so all of one instant."""
        return self._streams.snapshot()

    def restore(self, batches: Sequence[StreamBatch]) -> None:
        """Replace the streams of each batch's model with the batch's (before `start`); see
        `StreamDirectory.restore` for the errors."""
        self._streams.restore(batches)

    def adopt(self, batches: Sequence[StreamBatch], absent: Sequence[str] = ()) -> None:
        """Take stored state for some streams (see `StreamDirectory.adopt`)."""
        self._streams.adopt(batches, absent)

    def open_alert_ids(self) -> set[str]:
        return self._streams.open_alert_ids()

    def _pull(self, stream_ids: Sequence[str]) -> None:
        assert self._shared is not None
        self.adopt(self._shared.load(stream_ids), stream_ids)

    def _push(self, items: list[tuple[_Job, int]], by_model: dict[str, list[int]]) -> None:
        assert self._shared is not None
        steppers = self._streams.steppers
        self._shared.save([
            steppers[name].export([items[i][0].readings[items[i][1]].stream_id for i in rows])
            for name, rows in by_model.items()
        ])

    # -- streams, continued -----------------------------------------------------------------

    def stream_info(self, stream_id: str) -> StreamInfo:
        if self._shared is not None:
            self._pull([stream_id])
        name = self._streams.model_of(stream_id)
        if name is None:
            raise UnknownStreamError(f"no stream {stream_id!r}")
        return self._streams.steppers[name].info(stream_id)

    def stream_ids(self, after: str | None, limit: int) -> tuple[list[str], str | None]:
        """Stream ids in sorted order after the cursor `after`; the next cursor or None."""
        ids = self._streams.sorted_ids()
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
        return {name: len(stepper.arena) for name, stepper in self._streams.steppers.items()}

    def steppers(self) -> dict[str, Stepper]:
        return self._streams.steppers


_Run = tuple[_ColumnsJob, int, int]  # a columns job's readings [start, stop) in one round
_LOOK_AHEAD = 64  # columns jobs a round looks at, at most


def _one_by_one(runs: list[_Run]) -> list[tuple[_Job, int]]:
    """Runs of columns jobs as the readings `_run_round` takes and `_settle` settles."""
    for job, _, _ in runs:
        job.as_readings()
    return [(job, index) for job, start, stop in runs for index in range(start, stop)]
