"""Structured logs: one JSON object a line, each carrying the id of the request it belongs to.

`log_config(settings)` is a `logging.config.dictConfig` dictionary for the whole process
(uvicorn's loggers included); `bind_request` puts a request's context where every log record
made while serving it finds it. Keys and tokens never reach a line: the filter masks
`token=` query values and bearer credentials, and no code here logs reading values.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from service.settings import LogSettings

_SECRET = re.compile(r"(?i)(\btoken=|\bbearer\s+)[^\s&\"']+")
_MASK = r"\1[redacted]"


@dataclass(slots=True)
class RequestContext:
    """What logs say of the request being served: its id, and the key's name once known."""

    id: str
    caller: str | None = None


_REQUEST: ContextVar[RequestContext | None] = ContextVar("streamwatch_request", default=None)


def bind_request(context: RequestContext) -> Token[RequestContext | None]:
    """Log what follows under `context`, until `unbind_request` with the token returned."""
    return _REQUEST.set(context)


def unbind_request(token: Token[RequestContext | None]) -> None:
    _REQUEST.reset(token)


def current_request() -> RequestContext | None:
    return _REQUEST.get()


def redact(text: str) -> str:
    """`text` with API keys in `token=` parameters and bearer credentials masked."""
    return _SECRET.sub(_MASK, text)


class RequestFilter(logging.Filter):
    """Adds `request_id` (and `caller`) to every record, and masks secrets in its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _REQUEST.get()
        record.request_id = None if context is None else context.id
        if context is not None and context.caller is not None:
            record.caller = context.caller
        message = record.getMessage()
        if _SECRET.search(message):
            record.msg, record.args = redact(message), None
        return True


_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# What every record carries: anything else on a record came as `extra=` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
    "color_message",  # uvicorn's, with colours
}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request_id, then `extra` fields.

    Small on purpose: the access line is written once per request, and a general JSON log
    formatter took ~27 us a line where this takes a few.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def formatter(json_lines: bool = True) -> logging.Formatter:
    """JSON lines, or plain text."""
    return JsonFormatter() if json_lines else logging.Formatter(_TEXT_FORMAT)


def log_config(settings: LogSettings) -> dict[str, Any]:
    """One stderr handler for every logger (uvicorn's too), JSON lines or plain text."""
    inherit = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request": {"()": RequestFilter}},
        "formatters": {"default": {"()": formatter, "json_lines": settings.json_lines}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["request"],
            }
        },
        "root": {"handlers": ["stderr"], "level": settings.level},
        "loggers": {
            "uvicorn": {**inherit, "level": settings.level},
            "uvicorn.error": inherit,
            "uvicorn.access": inherit,  # off: see service.api.access
        },
    }
