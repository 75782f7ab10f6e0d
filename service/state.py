"""The state arena: every stream's recurrent state and statistics in preallocated arrays.

One arena per model. A stream owns a slot (a row in every array); `stream_id -> slot` is one
dict. Gather and scatter are one fancy-index per array, so a batch of readings never touches
a per-stream Python object.

>>> arena = StateArena(ArenaLayout(state_names=("h",), num_layers=1, hidden_size=4,
...                                channels=1, window=3), capacity=2, max_streams=10)
>>> slot = arena.bind("pump-1", threshold=0.999)
>>> arena.gather_state(np.array([slot]))[0].shape
(1, 1, 4)

`copy()` copies the arrays at one instant (a memcpy each, cheap enough for the event loop);
the copy's `pack()` turns the live streams' rows into records (slower: in a thread);
`restore()` puts such records back. What is persisted is `record_dtype`: every field but the
process-local `last_seen`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from service.errors import CapacityError

_LOCAL_FIELDS = ("last_seen",)  # monotonic seconds of this process: meaningless elsewhere


@dataclass(frozen=True)
class ArenaLayout:
    state_names: tuple[str, ...]
    num_layers: int
    hidden_size: int
    channels: int
    window: int  # readings of relative surprise kept (the longest scoring window)
    tail_bins: int = 0  # bins of the surprise histogram (service.scoring.TAIL_BINS)

    def fields(self) -> dict[str, tuple[tuple[int, ...], type, float]]:
        """Per-slot arrays: name -> (trailing shape, dtype, value of a fresh slot)."""
        f, nan = (self.channels,), float("nan")
        recurrent = (self.num_layers, self.hidden_size)
        return {
            **{f"state_{name}": (recurrent, np.float32, 0.0) for name in self.state_names},
            "count": ((), np.int64, 0),  # readings applied since the stream (re)started
            "seen": ((), np.int64, 0),  # readings applied in all
            "mean": (f, np.float64, 0.0),  # per-stream normalization
            "var": (f, np.float64, 0.0),
            "next_loc": (f, np.float64, nan),  # forecast of the next reading
            "next_scale": (f, np.float64, nan),
            "last_loc": (f, np.float64, nan),  # forecast the last reading was judged by
            "last_scale": (f, np.float64, nan),
            "history": ((self.window,), np.float32, 1.0),  # recent relative surprises
            "tail": ((self.tail_bins,), np.float32, 0.0),  # histogram of past surprises
            "open_hits": ((), np.uint32, 0),
            "hold_hits": ((), np.uint32, 0),
            "is_open": ((), np.bool_, False),
            "cooldown": ((), np.int32, 0),
            "threshold": ((), np.float64, nan),
            "last_ts": ((), np.float64, nan),
            "interval": ((), np.float64, nan),  # typical time between readings
            "last_score": ((), np.float64, 0.0),
            "last_flags": ((), np.uint8, 0),
            "last_seen": ((), np.float64, 0.0),  # monotonic seconds, for the TTL
        }

    def record_dtype(self) -> np.dtype:
        """One stream's persisted fields as a packed record: all but the process-local ones."""
        return np.dtype(
            [(name, dtype, shape) for name, (shape, dtype, _) in self.fields().items()
             if name not in _LOCAL_FIELDS]
        )


@dataclass(frozen=True)
class ArenaSnapshot:
    """Every stream of an arena at one instant: `records[i]` is `stream_ids[i]`'s state."""

    stream_ids: list[str]
    records: np.ndarray  # (streams,) of the arena's record_dtype


@dataclass(frozen=True)
class ArenaCopy:
    """An arena's persisted arrays and slot owners, copied at one instant, free slots too."""

    slot_ids: list[str | None]
    arrays: dict[str, np.ndarray]  # each (capacity, ...)
    record_dtype: np.dtype

    def pack(self) -> ArenaSnapshot:
        """The live streams' rows as records (a gather per field: keep it off the loop)."""
        live = np.array([s for s, sid in enumerate(self.slot_ids) if sid is not None], np.int64)
        records = np.empty(len(live), self.record_dtype)  # (streams,)
        for name in self.record_dtype.names or ():
            records[name] = self.arrays[name][live]
        return ArenaSnapshot([sid for sid in self.slot_ids if sid is not None], records)


class StateArena:
    """Slots for up to `max_streams` streams of one model; grows by doubling."""

    def __init__(self, layout: ArenaLayout, capacity: int, max_streams: int) -> None:
        self.layout = layout
        self.max_streams = max_streams
        self._spec = layout.fields()
        self.arrays: dict[str, np.ndarray] = {}
        self._capacity = 0
        self._slots: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._free: list[int] = []
        self._grow(min(capacity, max_streams))
        self.record_dtype = layout.record_dtype()

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, stream_id: str) -> bool:
        return stream_id in self._slots

    @property
    def capacity(self) -> int:
        return self._capacity

    def slot_of(self, stream_id: str) -> int | None:
        return self._slots.get(stream_id)

    def slots_of(self, stream_ids: list[str]) -> np.ndarray:
        """The slots of bound streams, in order: (len(stream_ids),) int64."""
        return np.fromiter(map(self._slots.__getitem__, stream_ids), np.int64, len(stream_ids))

    def stream_ids(self) -> Iterator[str]:
        return iter(self._slots)

    def stream_id_of(self, slot: int) -> str:
        stream_id = self._ids[slot]
        assert stream_id is not None, f"slot {slot} is free"
        return stream_id

    def bind(self, stream_id: str, threshold: float) -> int:
        """Give a new stream a fresh slot; CapacityError when max_streams are live."""
        if not self._free:
            if self._capacity >= self.max_streams:
                raise CapacityError(f"{self.max_streams} streams are live: the arena is full")
            self._grow(min(2 * self._capacity, self.max_streams))
        slot = self._free.pop()
        self.reset(slot)  # an int index: ~10x cheaper than a one-element fancy index
        self.arrays["threshold"][slot] = threshold
        self._slots[stream_id] = slot
        self._ids[slot] = stream_id
        return slot

    def release(self, stream_id: str) -> None:
        slot = self._slots.pop(stream_id)
        self._ids[slot] = None
        self._free.append(slot)

    def reset(self, slots: np.ndarray | int, keep: tuple[str, ...] = ()) -> None:
        """Return slots to a fresh stream's values, except the fields named in `keep`."""
        for name, (_, _, fresh) in self._spec.items():
            if name not in keep:
                self.arrays[name][slots] = fresh

    def gather_state(self, slots: np.ndarray) -> tuple[np.ndarray, ...]:
        """The recurrent state of `slots`, as the model takes it: each (layers, batch, hidden)."""
        return tuple(
            np.ascontiguousarray(self.arrays[f"state_{name}"][slots].transpose(1, 0, 2))
            for name in self.layout.state_names
        )

    def scatter_state(self, slots: np.ndarray, state: tuple[np.ndarray, ...]) -> None:
        for name, value in zip(self.layout.state_names, state, strict=True):
            self.arrays[f"state_{name}"][slots] = value.transpose(1, 0, 2)

    def read_records(self, slots: np.ndarray) -> np.ndarray:
        """Copies of the persisted fields of `slots`, one record each."""
        records = np.empty(len(slots), self.record_dtype)  # (slots,)
        for name in self.record_dtype.names or ():
            records[name] = self.arrays[name][slots]
        return records

    def write_records(self, slots: np.ndarray, records: np.ndarray) -> None:
        """Put records (of `record_dtype`) into `slots`; they count as just seen."""
        if records.dtype != self.record_dtype:
            raise ValueError(f"records of {records.dtype}, the arena keeps {self.record_dtype}")
        for name in self.record_dtype.names or ():
            self.arrays[name][slots] = records[name]
        self.arrays["last_seen"][slots] = time.monotonic()

    def copy(self) -> ArenaCopy:
        """Every stream as of now: a plain copy of each persisted array and of the slot owners."""
        names = self.record_dtype.names or ()
        return ArenaCopy(
            list(self._ids), {name: self.arrays[name].copy() for name in names}, self.record_dtype
        )

    def restore(self, snapshot: ArenaSnapshot) -> None:
        """Replace every stream with the snapshot's.

        ValueError if the records have another layout or an id repeats, CapacityError if
        there are more than max_streams; the arena is unchanged then.
        """
        stream_ids, n = snapshot.stream_ids, len(snapshot.stream_ids)
        if snapshot.records.dtype != self.record_dtype or len(snapshot.records) != n:
            raise ValueError("the snapshot was made for another arena layout")
        if len(set(stream_ids)) != n:
            raise ValueError("the snapshot names a stream twice")
        if n > self.max_streams:
            raise CapacityError(f"{n} streams to restore; state.max_streams is {self.max_streams}")
        capacity = self._capacity
        while capacity < n:
            capacity = min(2 * capacity, self.max_streams)
        if capacity > self._capacity:
            self._grow(capacity)
        self.reset(np.arange(self._capacity))
        self._slots = dict(zip(stream_ids, range(n), strict=True))
        self._ids = [*stream_ids, *([None] * (self._capacity - n))]
        self._free = list(range(self._capacity - 1, n - 1, -1))
        self.write_records(np.arange(n), snapshot.records)

    def idle_since(self, cutoff: float) -> list[str]:
        """Streams whose last reading arrived before `cutoff` (monotonic seconds)."""
        live = np.flatnonzero(self.arrays["last_seen"][: self._capacity] < cutoff)
        return [sid for slot in live if (sid := self._ids[slot]) is not None]

    def _grow(self, capacity: int) -> None:
        old = self._capacity
        for name, (shape, dtype, fresh) in self._spec.items():
            grown: np.ndarray = np.full((capacity, *shape), fresh, dtype=dtype)
            if old:
                grown[:old] = self.arrays[name]
            self.arrays[name] = grown
        self._ids.extend([None] * (capacity - old))
        self._free.extend(range(capacity - 1, old - 1, -1))  # pop() hands out low slots first
        self._capacity = capacity
