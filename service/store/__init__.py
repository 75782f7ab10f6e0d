"""Where alerts and stream state persist, chosen by `settings.store.backend`.

    sqlite  (default) alert log in `<data_dir>/alerts.sqlite3` (WAL); the state in the process,
            snapshotted to `<data_dir>/state.snapshot` every `snapshot_interval_s` and at
            shutdown, restored at start (`service.store.local`, `.sqlite`, `.snapshot`)
    redis   state and alert log in Redis, shared by replicas; each round reads its streams
            in one round trip and writes them in one (`service.store.redis`)
    memory  nothing kept: an in-memory alert log, no snapshots (tests)

>>> store = open_store(settings, registry)
>>> engine = Engine(registry, settings, on_alerts, shared=store.shared)
>>> store.restore(engine).status
'restored'
"""

from __future__ import annotations

from service.alerts import MemoryAlertLog
from service.directory import arena_layout
from service.registry import ModelRegistry
from service.settings import Settings
from service.store.base import RestoreReport, Store
from service.store.local import DataDirLock, LocalStore
from service.store.sqlite import SqliteAlertLog

__all__ = ["RestoreReport", "Store", "open_store"]

ALERT_LOG_FILE = "alerts.sqlite3"
SNAPSHOT_FILE = "state.snapshot"


def open_store(settings: Settings, registry: ModelRegistry) -> Store:
    """The configured store, open; StoreUnavailableError if it cannot be reached."""
    store, limit = settings.store, settings.alerts.history_limit
    if store.backend == "redis":
        from service.store.redis import RecordFormat, RedisStore

        formats = [
            RecordFormat(name, m.card.sha256, arena_layout(m.card, settings).record_dtype())
            for name, m in registry.models.items()
        ]
        return RedisStore(store, limit, formats)
    if store.backend == "memory":
        return LocalStore("memory", MemoryAlertLog(limit), None, registry, 0.0)
    data_dir = settings.data_dir
    lock = DataDirLock(data_dir)
    try:
        alert_log = SqliteAlertLog(data_dir / ALERT_LOG_FILE, limit, store.sqlite_synchronous)
    except BaseException:
        lock.release()
        raise
    return LocalStore(
        "sqlite", alert_log, data_dir / SNAPSHOT_FILE, registry, store.snapshot_interval_s, lock
    )
