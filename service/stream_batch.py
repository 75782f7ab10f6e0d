"""Some streams of one model as a store keeps them (`StreamBatch`), and a model's streams
copied at one instant to become one (`StateCopy`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.alerts import Alert
from service.results import AlertRef
from service.state import ArenaCopy


@dataclass(frozen=True)
class StreamBatch:
    """Some streams of one model as a store keeps them: arena records and alert memory."""

    model: str
    stream_ids: list[str]
    records: np.ndarray  # (streams,) of the arena's record_dtype
    open_alerts: dict[str, Alert]  # stream_id -> its open alert, for those that have one
    last_alerts: dict[str, AlertRef]  # stream_id -> the alert event of its last reading

    def subset(self, keep: Sequence[int]) -> StreamBatch:
        """The streams at positions `keep`."""
        ids = [self.stream_ids[j] for j in keep]
        return StreamBatch(
            self.model, ids, self.records.take(np.asarray(keep, np.int64)),
            {sid: a for sid in ids if (a := self.open_alerts.get(sid)) is not None},
            {sid: r for sid in ids if (r := self.last_alerts.get(sid)) is not None},
        )


@dataclass(frozen=True)
class StateCopy:
    """One model's streams copied at one instant (cheap); `batch()` packs them (off the loop)."""

    model: str
    arena: ArenaCopy
    open_alerts: dict[str, Alert]
    last_alerts: dict[str, AlertRef]

    def batch(self) -> StreamBatch:
        packed = self.arena.pack()
        return StreamBatch(
            self.model, packed.stream_ids, packed.records, self.open_alerts, self.last_alerts
        )
