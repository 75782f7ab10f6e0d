"""The alert log in a SQLite file (WAL): an event is on disk before `extend` returns.

Two tables: `events` (every event under its sequence number, which AUTOINCREMENT never
reuses, so numbers continue across restarts) and `alerts` (the latest version of each alert,
ordered by the sequence number of its last event). A round's events are one transaction.

>>> log = SqliteAlertLog(Path("data/alerts.sqlite3"), limit=100_000)
>>> [event.seq for event in log.extend([("opened", alert)])]
[1]
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from service.alerts import Alert, AlertEvent, AlertLog, AlertQuery, EventKind
from service.errors import StoreUnavailableError
from service.store._codec import alert_from_json, alert_to_json

log = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL,
    alert BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    stream_id TEXT NOT NULL,
    opened_at REAL NOT NULL,
    is_open INTEGER NOT NULL,
    alert BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_by_last_seq ON alerts (last_seq);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (is_open) WHERE is_open;
"""
_UPSERT = """
INSERT INTO alerts (id, last_seq, stream_id, opened_at, is_open, alert)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    last_seq = excluded.last_seq, is_open = excluded.is_open, alert = excluded.alert
"""
_PAGE = """
SELECT alert FROM alerts
WHERE (:before IS NULL OR last_seq < :before)
  AND (:stream IS NULL OR glob_case(stream_id, :stream))
  AND (:since IS NULL OR opened_at >= :since)
  AND (:open IS NULL OR is_open = :open)
ORDER BY last_seq DESC
LIMIT :n
"""
_PRUNE_EVERY = 64  # events between retention sweeps


class SqliteAlertLog(AlertLog):
    """Every alert event in a SQLite file; keeps the `limit` latest-changed closed alerts
    (open ones always) and the last 2 x `limit` events."""

    def __init__(
        self, path: Path, limit: int, synchronous: Literal["NORMAL", "FULL"] = "FULL"
    ) -> None:
        self.path = path
        self._limit = limit
        self._unpruned = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # One connection, used only from the event loop; autocommit, explicit BEGIN.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL on {path} (journal_mode={mode})")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.create_function("glob_case", 2, _glob_case, deterministic=True)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise sqlite3.DatabaseError(
                    f"{path} has alert-log schema {version}; this server knows {_SCHEMA_VERSION}"
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailableError(f"alert log {path}: {exc}") from exc

    def extend(self, events: Sequence[tuple[EventKind, Alert]]) -> list[AlertEvent]:
        recorded: list[AlertEvent] = []
        with self._transaction():
            for kind, alert in events:
                body = alert_to_json(alert)
                cursor = self._db.execute(
                    "INSERT INTO events (event, alert) VALUES (?, ?)", (kind, body)
                )
                seq = cursor.lastrowid
                assert seq is not None
                self._db.execute(
                    _UPSERT,
                    (alert.id, seq, alert.stream_id, alert.opened_at, alert.is_open, body),
                )
                recorded.append(AlertEvent(seq, kind, alert))
            self._unpruned += len(events)
            if self._unpruned >= min(_PRUNE_EVERY, self._limit):
                self._prune()
        return recorded

    def events_after(self, seq: int) -> Iterator[AlertEvent]:
        rows = self._query(
            "SELECT seq, event, alert FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, 2 * self._limit),
        )
        return (AlertEvent(row[0], row[1], alert_from_json(row[2])) for row in rows)

    def page(self, query: AlertQuery) -> tuple[list[Alert], str | None]:
        before = None
        if query.before_id is not None:
            found = self._query("SELECT last_seq FROM alerts WHERE id = ?", (query.before_id,))
            if not found:
                return [], None
            before = found[0][0]
        rows = self._query(
            _PAGE,
            {"before": before, "stream": query.stream, "since": query.since,
             "open": query.open_only, "n": query.limit + 1},
        )
        page = [alert_from_json(row[0]) for row in rows[:query.limit]]
        return page, (page[-1].id if len(rows) > query.limit else None)

    def open_alerts(self) -> list[Alert]:
        return [alert_from_json(row[0]) for row in self._query(
            "SELECT alert FROM alerts WHERE is_open ORDER BY last_seq", ()
        )]

    def ping(self) -> None:
        self._query("SELECT 1", ())

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def _prune(self) -> None:
        self._db.execute(
            "DELETE FROM alerts WHERE NOT is_open AND last_seq < (SELECT last_seq FROM alerts "
            "ORDER BY last_seq DESC LIMIT 1 OFFSET ?)",
            (self._limit - 1,),
        )
        self._db.execute(
            "DELETE FROM events WHERE seq <= (SELECT max(seq) FROM events) - ?",
            (2 * self._limit,),
        )
        self._unpruned = 0

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("alert log %s: write failed: %s", self.path, exc)
            raise StoreUnavailableError(f"the alert log cannot be written: {exc}") from exc

    def _query(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> list[Any]:
        try:
            rows: list[Any] = self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"the alert log cannot be read: {exc}") from exc
        return rows


def _glob_case(name: str, pattern: str) -> bool:
    """The stream glob of the API, as in the in-memory log (fnmatch, case-sensitive)."""
    return fnmatch.fnmatchcase(name, pattern)
