"""The embedded store: state lives in the process and is snapshotted to the data directory;
alerts go to SQLite there. With the `memory` backend nothing is kept (tests, replay)."""

from __future__ import annotations

import fcntl
import logging
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from service.alerts import AlertLog
from service.engine import Engine
from service.errors import StoreUnavailableError
from service.registry import ModelRegistry
from service.store.base import RestoreReport
from service.store.snapshot import Snapshotter, restore_snapshot
from service.store.sqlite import SqliteAlertLog

log = logging.getLogger(__name__)

LOCK_FILE = "streamwatch.lock"


class DataDirLock:
    """This process's claim on a data directory, held until `release()`.

    Two servers on one directory would overwrite each other's snapshot and lose streams; the
    second is refused at start instead.
    """

    def __init__(self, directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] = (directory / LOCK_FILE).open("a")
        except OSError as exc:
            raise StoreUnavailableError(f"data directory {directory}: {exc}") from exc
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise StoreUnavailableError(
                f"data directory {directory} is in use by another server process; give each "
                "its own STREAMWATCH_DATA_DIR, or share state with STREAMWATCH_STORE__BACKEND=redis"
            ) from None

    def release(self) -> None:
        self._file.close()  # closing drops the lock


class LocalStore:
    """An alert log and, when `snapshot_path` is given, state snapshots every `interval_s`."""

    shared = None

    def __init__(
        self,
        backend: str,
        alert_log: AlertLog,
        snapshot_path: Path | None,
        registry: ModelRegistry,
        interval_s: float,
        lock: DataDirLock | None = None,
    ) -> None:
        self.backend = backend
        self._lock = lock
        self.alert_log = alert_log
        self._snapshot_path = snapshot_path
        self._registry = registry
        self._interval_s = interval_s
        self._snapshotter: Snapshotter | None = None
        self.report: RestoreReport | None = None

    def restore(self, engine: Engine) -> RestoreReport:
        """The last snapshot into the engine; then alerts the state no longer holds open close."""
        if self._snapshot_path is None:
            self.report = RestoreReport("none", 0, f"{self.backend} store: nothing is kept")
            return self.report
        self.report = restore_snapshot(self._snapshot_path, engine, self._registry)
        self._close_orphans(engine)
        return self.report

    async def start(self, engine: Engine) -> None:
        if self._snapshot_path is not None:
            self._snapshotter = Snapshotter(
                self._snapshot_path, engine, self._registry, self._interval_s
            )
            await self._snapshotter.start()

    async def stop(self) -> None:
        if self._snapshotter is not None:
            await self._snapshotter.stop()

    def ping(self) -> None:
        if isinstance(self.alert_log, SqliteAlertLog):
            self.alert_log.ping()

    def status(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "restore": None if self.report is None else self.report.to_json(),
            "snapshots": None if self._snapshotter is None else self._snapshotter.status(),
        }

    def close(self) -> None:
        self.alert_log.close()
        if self._lock is not None:
            self._lock.release()

    def _close_orphans(self, engine: Engine) -> None:
        """Close alerts the log has open but the restored state does not.

        After a crash the state goes back to the last snapshot: an alert opened after it, or
        on a stream that starts clean, would otherwise stay open in the log forever. It closes
        as a forgotten stream's does, at its peak.
        """
        held = engine.open_alert_ids()
        orphans = [alert for alert in self.alert_log.open_alerts() if alert.id not in held]
        if orphans:
            self.alert_log.extend([("closed", replace(a, closed_at=a.peak_at)) for a in orphans])
            log.warning(
                "closed %d alert(s) that were open in the log but not in the restored state "
                "(opened after the last snapshot, or their stream starts clean)",
                len(orphans),
            )
