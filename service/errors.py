"""Domain errors: raised anywhere in the server, rendered as RFC 9457 problem+json by one handler.

    StreamwatchError                     500  (base; never raised bare)
    ├── InvalidReadingError              422  a value is NaN/inf, wrong channel count, bad timestamp
    ├── OutOfOrderError                  409  timestamp older than the stream's last applied one
    ├── UnknownModelError                404  the request names a model that is not loaded
    ├── UnknownStreamError               404  the stream has no state
    ├── ModelMismatchError               409  the stream is bound to another model
    ├── LimitExceededError               413  body, batch, frame or channel limit
    ├── CapacityError                    503  the arena or the queue is full
    ├── ShuttingDownError                503  the engine is stopping
    ├── StoreUnavailableError            503  the alert log or the state store cannot be reached
    ├── UnauthenticatedError             401  no API key, or one the server does not know
    ├── ForbiddenError                   403  the key lacks the role the route needs
    ├── RateLimitedError                 429  the key made too many requests; retry after a while
    ├── RoundFailedError                 500  an unexpected fault in the engine (logged)
    └── ModelLoadError                   500  a model on disk cannot be served

Errors carry no HTTP machinery: `status` and `title` are data, read by the handler.
"""

from __future__ import annotations


class StreamwatchError(Exception):
    """Base of every error the server reports to a client."""

    status = 500
    title = "Internal error"
    slug = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def type_uri(self) -> str:
        return f"https://streamwatch.dev/problems/{self.slug}"


class InvalidReadingError(StreamwatchError):
    status = 422
    title = "Invalid reading"
    slug = "invalid-reading"


class OutOfOrderError(StreamwatchError):
    status = 409
    title = "Reading out of order"
    slug = "out-of-order"


class UnknownModelError(StreamwatchError):
    status = 404
    title = "Unknown model"
    slug = "unknown-model"


class UnknownStreamError(StreamwatchError):
    status = 404
    title = "Unknown stream"
    slug = "unknown-stream"


class ModelMismatchError(StreamwatchError):
    status = 409
    title = "Stream bound to another model"
    slug = "model-mismatch"


class LimitExceededError(StreamwatchError):
    status = 413
    title = "Limit exceeded"
    slug = "limit-exceeded"


class CapacityError(StreamwatchError):
    status = 503
    title = "At capacity"
    slug = "capacity"


class ShuttingDownError(StreamwatchError):
    status = 503
    title = "Shutting down"
    slug = "shutting-down"


class UnauthenticatedError(StreamwatchError):
    status = 401
    title = "Not authenticated"
    slug = "unauthenticated"


class ForbiddenError(StreamwatchError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class RateLimitedError(StreamwatchError):
    status = 429
    title = "Too many requests"
    slug = "rate-limited"

    def __init__(self, detail: str, retry_after_s: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class StoreUnavailableError(StreamwatchError):
    status = 503
    title = "Store unavailable"
    slug = "store-unavailable"


class RoundFailedError(StreamwatchError):
    status = 500
    title = "Engine fault"
    slug = "round-failed"


class ModelLoadError(StreamwatchError):
    status = 500
    title = "Model cannot be loaded"
    slug = "model-load"
