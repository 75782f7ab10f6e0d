"""State snapshots: every stream of every model in one file, written atomically, checked on read.

The file is `MAGIC | header length (u64 LE) | header (JSON) | records | sha256 of all before`.
The header carries the format version, the time taken and, per model, its ONNX sha256, the
record layout, the stream ids and their alert memory; the records are each model's arena
records, raw, in header order. A write goes to a temp file, is fsynced, renamed over the old
one, and the directory fsynced: a reader sees the old snapshot or the new one, never half.

>>> write_snapshot(path, Snapshot.pack(time.time(), engine.snapshot(), shas))
>>> read_snapshot(Path("data/state.snapshot")).batches[0].stream_ids
['pump-1', ...]
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.alerts import Alert
from service.engine import Engine
from service.registry import ModelRegistry
from service.results import AlertRef
from service.store._codec import alert_from_dict
from service.store.base import RestoreReport
from service.stream_batch import StateCopy, StreamBatch

log = logging.getLogger(__name__)

MAGIC = b"SWSNAP\r\n"  # \r\n: a text-mode copy that mangles line ends breaks the magic
FORMAT = 1
_DIGEST = 32


class SnapshotError(Exception):
    """A snapshot file that cannot be used: not one, another format, corrupt or truncated."""


@dataclass(frozen=True)
class Snapshot:
    taken_at: float  # epoch seconds
    batches: list[StreamBatch]  # one per model
    sha256: dict[str, str]  # model -> sha256 of its ONNX file

    @classmethod
    def pack(cls, taken_at: float, copies: list[StateCopy], sha256: dict[str, str]) -> Snapshot:
        """From `Engine.snapshot()`'s copies (the slow part of a snapshot: off the loop)."""
        return cls(taken_at, [copy.batch() for copy in copies], sha256)


def write_snapshot(path: Path, snapshot: Snapshot) -> int:
    """Write atomically (temp file, fsync, rename, fsync dir); returns the bytes written."""
    header = orjson.dumps({
        "format": FORMAT,
        "taken_at": snapshot.taken_at,
        "models": [_model_header(b, snapshot.sha256[b.model]) for b in snapshot.batches],
    })
    tmp = path.with_name(f"{path.name}.tmp")
    digest = hashlib.sha256()
    size = 0
    try:
        with tmp.open("wb") as f:
            for chunk in _chunks(header, snapshot.batches):
                digest.update(chunk)
                f.write(chunk)
                size += len(chunk)
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return size + _DIGEST


def read_snapshot(path: Path) -> Snapshot:
    """The snapshot in `path`; SnapshotError if it is not a whole, valid one."""
    data = path.read_bytes()
    if len(data) < len(MAGIC) + 8 + _DIGEST or not data.startswith(MAGIC):
        raise SnapshotError("not a streamwatch snapshot (bad magic or too short)")
    body = memoryview(data)[:-_DIGEST]
    if hashlib.sha256(body).digest() != data[-_DIGEST:]:
        raise SnapshotError("checksum mismatch: the file is corrupt or truncated")
    start = len(MAGIC) + 8
    end = start + int.from_bytes(data[len(MAGIC) : start], "little")
    try:
        header = orjson.loads(body[start:end])
        if header.get("format") != FORMAT:
            raise SnapshotError(f"format {header.get('format')!r}; this server reads {FORMAT}")
        batches, offset = [], end
        for model in header["models"]:
            batch, offset = _model_batch(model, body, offset)
            batches.append(batch)
        if offset != len(body):
            raise SnapshotError(f"{len(body) - offset} bytes after the last model's records")
        shas = {m["model"]: str(m["sha256"]) for m in header["models"]}
        return Snapshot(float(header["taken_at"]), batches, shas)
    except (KeyError, TypeError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise SnapshotError(f"malformed header: {exc!r}") from exc


def restore_snapshot(path: Path, engine: Engine, registry: ModelRegistry) -> RestoreReport:
    """Put the snapshot in `path` into the engine, each model's streams only if they fit.

    A snapshot that cannot be read, or whose streams of some model cannot be used (the model
    is gone, its ONNX file changed, its layout changed, too many streams), is renamed aside
    with a log line; the streams it cannot give back start clean. Never raises for a bad file.
    """
    if not path.exists():
        return RestoreReport("none", 0, f"no snapshot at {path}: starting clean")
    try:
        snapshot = read_snapshot(path)
    except (SnapshotError, OSError) as exc:
        aside = set_aside(path, "corrupt")
        log.error(
            "state snapshot %s is unusable (%s); set aside as %s; every stream starts clean",
            path, exc, aside.name,
        )
        return RestoreReport("set_aside", 0, f"snapshot unusable: {exc}", aside.name)
    usable, refused = [], []
    for batch in snapshot.batches:
        reason = _unfit(batch, snapshot.sha256.get(batch.model, ""), engine, registry)
        if reason is None:
            usable.append(batch)
        else:
            refused.append(f"{len(batch.stream_ids)} stream(s) of model {batch.model!r}: {reason}")
    try:
        engine.restore(usable)
    except ValueError as exc:
        usable, refused = [], [str(exc)]
    streams = sum(len(b.stream_ids) for b in usable)
    age = time.time() - snapshot.taken_at
    if not refused:
        log.info("restored %d stream(s) from %s (taken %.1f s ago)", streams, path, age)
        return RestoreReport("restored", streams, f"snapshot taken {age:.1f} s before start")
    aside = set_aside(path, "mismatch")
    detail = "; ".join(refused)
    log.error(
        "state snapshot %s: set aside as %s: %s; those streams start clean (restored %d)",
        path, aside.name, detail, streams,
    )
    return RestoreReport("partial" if usable else "set_aside", streams, detail, aside.name)


def set_aside(path: Path, why: str) -> Path:
    """Rename `path` out of the way (`<name>.<why>-<UTC time>`), keeping it for a post-mortem."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.{why}-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.{why}-{stamp}-{n}")
    os.replace(path, aside)
    _fsync_dir(path.parent)
    return aside


class Snapshotter:
    """Snapshots the engine every `interval_s` (when something changed) and at `stop()`.

    The copy is made in the event loop, between rounds, so it is of one instant; encoding
    and writing happen in a thread, so ingestion stalls only for the copy.
    """

    def __init__(
        self, path: Path, engine: Engine, registry: ModelRegistry, interval_s: float
    ) -> None:
        self.path = path
        self._engine = engine
        self._sha256 = {name: m.card.sha256 for name, m in registry.models.items()}
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        self._taken_of: tuple[int, int] | None = None
        self.taken_at: float | None = None  # epoch seconds of the last snapshot written
        self.pause_s: float | None = None  # how long the last copy held the loop
        self.duration_s: float | None = None  # copy + write of the last snapshot
        self.size_bytes: int | None = None
        self.error: str | None = None  # why the last attempt failed, until one succeeds
        self.count = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._every_interval(), name="streamwatch-snapshots")

    async def stop(self) -> None:
        """Stop the periodic snapshots and take a last one (call after the engine drained).

        A snapshot being written finishes first: its thread cannot be cancelled, and two
        writers must never share the temp file.
        """
        self._stopping.set()
        if self._task is not None:
            await self._task
        await self.take(force=True)

    async def take(self, force: bool = False) -> None:
        async with self._lock:
            change = (self._engine.rounds, sum(self._engine.live_streams.values()))
            if not force and change == self._taken_of:
                return
            started, taken_at = time.perf_counter(), time.time()
            copies = self._engine.snapshot()
            self.pause_s = time.perf_counter() - started
            try:
                size = await asyncio.to_thread(self._write, taken_at, copies)
            except OSError as exc:
                self.error = str(exc)
                log.error("state snapshot to %s failed: %s", self.path, exc)
                return
            self.duration_s = time.perf_counter() - started
            self.taken_at, self.size_bytes, self.error = taken_at, size, None
            self._taken_of = change
            self.count += 1

    def status(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "interval_s": self._interval_s,
            "taken_at": self.taken_at,
            "age_s": None if self.taken_at is None else time.time() - self.taken_at,
            "pause_s": self.pause_s,
            "duration_s": self.duration_s,
            "size_bytes": self.size_bytes,
            "count": self.count,
            "error": self.error,
        }

    def _write(self, taken_at: float, copies: list[StateCopy]) -> int:
        return write_snapshot(self.path, Snapshot.pack(taken_at, copies, self._sha256))

    async def _every_interval(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)
                return
            await self.take()


def _model_header(batch: StreamBatch, sha256: str) -> dict[str, Any]:
    fields: Mapping[str, Any] = batch.records.dtype.fields or {}
    return {
        "model": batch.model,
        "sha256": sha256,
        "fields": [
            [name, kind.base.str, list(kind.shape)] for name, (kind, *_) in fields.items()
        ],
        "stream_ids": batch.stream_ids,
        "open_alerts": batch.open_alerts,
        "last_alerts": {sid: [r.id, r.event] for sid, r in batch.last_alerts.items()},
    }


def _chunks(header: bytes, batches: list[StreamBatch]) -> Iterator[bytes | memoryview]:
    yield MAGIC
    yield len(header).to_bytes(8, "little")
    yield header
    for batch in batches:
        yield np.ascontiguousarray(batch.records).view(np.uint8).data


def _model_batch(model: dict[str, Any], body: memoryview, offset: int) -> tuple[StreamBatch, int]:
    fields = model["fields"]
    dtype = np.dtype([(name, np.dtype(kind), tuple(shape)) for name, kind, shape in fields])
    stream_ids = [str(sid) for sid in model["stream_ids"]]
    end = offset + len(stream_ids) * dtype.itemsize
    if end > len(body):
        raise SnapshotError(f"model {model['model']!r}: records run past the end of the file")
    records = np.frombuffer(body, dtype, count=len(stream_ids), offset=offset)
    open_alerts: dict[str, Alert] = {
        sid: alert_from_dict(fields) for sid, fields in model["open_alerts"].items()
    }
    last_alerts = {
        sid: AlertRef(str(ref[0]), str(ref[1])) for sid, ref in model["last_alerts"].items()
    }
    return StreamBatch(str(model["model"]), stream_ids, records, open_alerts, last_alerts), end


def _unfit(batch: StreamBatch, sha256: str, engine: Engine, registry: ModelRegistry) -> str | None:
    """Why a model's streams from a snapshot cannot be restored, or None if they can."""
    model = registry.models.get(batch.model)
    if model is None:
        return "the model is not loaded any more"
    if model.card.sha256 != sha256:
        return f"made for ONNX sha256 {sha256[:12]}, the model's is {model.card.sha256[:12]}"
    arena = engine.steppers()[batch.model].arena
    if batch.records.dtype != arena.record_dtype:
        return "the per-stream layout changed (model sizes or scoring settings)"
    if len(batch.stream_ids) > arena.max_streams:
        return f"more than state.max_streams={arena.max_streams}"
    return None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
