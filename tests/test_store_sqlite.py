"""The SQLite alert log: WAL on disk, one transaction per round, bounded, numbers never reused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from service.alerts import Alert
from service.errors import StoreUnavailableError
from service.store.sqlite import SqliteAlertLog


def _alert(i: int, closed: float | None = None) -> Alert:
    return Alert(id=f"a{i}", stream_id=f"pump-{i}", model="default", opened_at=float(i),
                 closed_at=closed, peak_score=0.9999, peak_at=float(i), readings=1,
                 forecast_at_peak=[1.0], actual_at_peak=[9.0])


def test_the_log_is_a_wal_file_synced_in_full_by_default(tmp_path: Path) -> None:
    log = SqliteAlertLog(tmp_path / "alerts.sqlite3", limit=10)
    log.append("opened", _alert(1))
    assert log._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    other = sqlite3.connect(tmp_path / "alerts.sqlite3")
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT count(*) FROM events").fetchone()[0] == 1  # committed
    other.close()
    log.close()


def test_a_round_of_events_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    log = SqliteAlertLog(tmp_path / "alerts.sqlite3", limit=10)
    unwritable = Alert(id="bad", stream_id="s", model="default", opened_at=1.0, closed_at=None,
                       peak_score=1.0, peak_at=1.0, readings=1,
                       forecast_at_peak=[object()],  # type: ignore[list-item]
                       actual_at_peak=[1.0])
    with pytest.raises(TypeError):
        log.extend([("opened", _alert(1)), ("opened", unwritable)])
    assert list(log.events_after(0)) == [] and log.alerts() == ([], None)
    assert log.append("opened", _alert(2)).seq >= 1  # the log still works
    log.close()


def test_old_closed_alerts_and_events_are_pruned_but_open_ones_kept(tmp_path: Path) -> None:
    log = SqliteAlertLog(tmp_path / "alerts.sqlite3", limit=4)
    log.append("opened", _alert(0))  # stays open throughout
    for i in range(1, 41):
        log.extend([("opened", _alert(i)), ("closed", _alert(i, closed=i + 0.5))])
    alerts, _ = log.alerts(limit=100)
    assert 4 <= len(alerts) <= 4 + 4 + 1  # pruned every `limit` events, open ones aside
    assert "a0" in {a.id for a in alerts} and alerts[0].id == "a40"
    events = list(log.events_after(0))
    assert len(events) <= 2 * 4 + 4 and events[-1].seq == 81
    log.close()


def test_sequence_numbers_are_never_reused_even_after_pruning_everything(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite3"
    log = SqliteAlertLog(path, limit=1)
    last = [log.append("closed", _alert(i, closed=1.0)).seq for i in range(5)][-1]
    log._db.execute("DELETE FROM events")
    log.close()
    again = SqliteAlertLog(path, limit=1)
    assert again.append("opened", _alert(9)).seq == last + 1
    again.close()


def test_a_log_that_cannot_be_opened_is_a_store_unavailable_error(tmp_path: Path) -> None:
    (tmp_path / "alerts.sqlite3").mkdir()
    with pytest.raises(StoreUnavailableError, match="alert log"):
        SqliteAlertLog(tmp_path / "alerts.sqlite3", limit=10)


def test_a_log_of_a_newer_schema_is_refused_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=7")
    db.close()
    with pytest.raises(StoreUnavailableError, match="schema 7"):
        SqliteAlertLog(path, limit=10)


def test_a_write_that_fails_is_a_store_unavailable_error(tmp_path: Path) -> None:
    log = SqliteAlertLog(tmp_path / "alerts.sqlite3", limit=10)
    log.close()
    with pytest.raises(StoreUnavailableError, match="cannot be written"):
        log.append("opened", _alert(1))
    with pytest.raises(StoreUnavailableError, match="cannot be read"):
        log.ping()
