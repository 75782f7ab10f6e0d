"""What every store offers the app: an alert log, state kept across restarts, a health check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from service.alerts import AlertLog

if TYPE_CHECKING:
    from service.engine import Engine, SharedState

RestoreStatus = Literal["restored", "partial", "set_aside", "none", "shared"]


@dataclass(frozen=True)
class RestoreReport:
    """What a store put back into the engine at start.

    restored: the whole snapshot; partial: some models' streams were set aside; set_aside:
    the snapshot was unusable and every stream starts clean; none: there was nothing to
    restore; shared: state is read from the shared store (Redis) as streams are used.
    """

    status: RestoreStatus
    streams: int
    detail: str
    set_aside_as: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "status": self.status,
            "streams": self.streams,
            "detail": self.detail,
            "set_aside_as": self.set_aside_as,
        }


class Store(Protocol):
    """Where alerts and stream state persist. The app's lifespan drives it:

    `open_store` -> Engine(shared=store.shared) -> `restore(engine)` -> `start(engine)` ->
    serve -> engine drained -> `stop()` (a last snapshot) -> `close()`.
    """

    @property
    def backend(self) -> str: ...

    @property
    def alert_log(self) -> AlertLog: ...

    @property
    def shared(self) -> SharedState | None:
        """Per-round state for the engine; None: state lives in the process (snapshots)."""
        ...

    def restore(self, engine: Engine) -> RestoreReport: ...

    async def start(self, engine: Engine) -> None: ...

    async def stop(self) -> None: ...

    def ping(self) -> None:
        """Raise StoreUnavailableError if the store cannot be reached."""
        ...

    def status(self) -> dict[str, object]: ...

    def close(self) -> None: ...
