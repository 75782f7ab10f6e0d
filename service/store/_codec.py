"""Alerts as JSON bytes, exactly: every float round-trips, so a stored alert reads back equal."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from service.alerts import Alert


def alert_to_json(alert: Alert) -> bytes:
    return orjson.dumps(dataclasses.asdict(alert))


def alert_from_json(raw: bytes | str) -> Alert:
    return alert_from_dict(orjson.loads(raw))


def alert_from_dict(fields: dict[str, Any]) -> Alert:
    return Alert(**fields)
