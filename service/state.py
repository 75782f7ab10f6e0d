"""The state arena: every stream's recurrent state and statistics in preallocated arrays.

One arena per model. A stream owns a slot (a row in every array); `stream_id -> slot` is one
dict. Gather and scatter are one fancy-index per array, so a batch of readings never touches
a per-stream Python object.

>>> arena = StateArena(ArenaLayout(state_names=("h",), num_layers=1, hidden_size=4,
...                                channels=1, window=3), capacity=2, max_streams=10)
>>> slot = arena.bind("pump-1", threshold=0.999)
>>> arena.gather_state(np.array([slot]))[0].shape
(1, 1, 4)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from service.errors import CapacityError


@dataclass(frozen=True)
class ArenaLayout:
    state_names: tuple[str, ...]
    num_layers: int
    hidden_size: int
    channels: int
    window: int

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
            "history": ((self.window,), np.float64, 1.0),  # recent relative surprises
            "level": ((), np.float64, 1.0),  # long-run surprise level
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

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, stream_id: str) -> bool:
        return stream_id in self._slots

    @property
    def capacity(self) -> int:
        return self._capacity

    def slot_of(self, stream_id: str) -> int | None:
        return self._slots.get(stream_id)

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
        self.reset(np.array([slot]))
        self.arrays["threshold"][slot] = threshold
        self._slots[stream_id] = slot
        self._ids[slot] = stream_id
        return slot

    def release(self, stream_id: str) -> None:
        slot = self._slots.pop(stream_id)
        self._ids[slot] = None
        self._free.append(slot)

    def reset(self, slots: np.ndarray, keep: tuple[str, ...] = ()) -> None:
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
