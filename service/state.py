"""The state arena: every stream's recurrent state and statistics in preallocated arrays.

One arena per model. A stream owns a slot: a packed record (`record_dtype`) in one array. A
round reads and writes its streams' records where they lie, in compiled passes
(`service.passes`, through the `compiled` and `states` views), and never touches a
per-stream Python object. `stream_id -> slot` is one dict.

>>> arena = StateArena(ArenaLayout(state_names=("h",), num_layers=1, hidden_size=4,
...                                channels=1), capacity=2, max_streams=10)
>>> slot = arena.bind("pump-1", threshold=0.999)
>>> arena.states[slot].shape  # (states, layers, hidden)
(1, 1, 4)

`copy()` copies the records at one instant (one memcpy, cheap enough for the event loop);
the copy's `pack()` keeps the live streams' records (slower: in a thread); `restore()` puts
such records back. What is persisted is `record_dtype`: every field but the process-local
`last_seen`, which is kept in an array of its own.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from service.errors import CapacityError

_LOCAL_FIELDS = ("last_seen",)  # monotonic seconds of this process: meaningless elsewhere


@dataclass(frozen=True)
class ArenaLayout:
    state_names: tuple[str, ...]
    num_layers: int
    hidden_size: int
    channels: int
    # The scorer's per-stream arrays (`service.likelihood.fields`), kept as `score_<name>`:
    # name -> (trailing shape, dtype, value of a fresh slot).
    scores: tuple[tuple[str, tuple[int, ...], type, float], ...] = ()

    def fields(self) -> dict[str, tuple[tuple[int, ...], type, float]]:
        """Per-slot arrays: name -> (trailing shape, dtype, value of a fresh slot)."""
        f, nan = (self.channels,), float("nan")
        recurrent = (self.num_layers, self.hidden_size)
        return {
            **{f"state_{name}": (recurrent, np.float32, 0.0) for name in self.state_names},
            "count": ((), np.int32, 0),  # readings applied since the stream (re)started
            "seen": ((), np.int64, 0),  # readings applied in all
            "mean": (f, np.float64, 0.0),  # per-stream normalization
            "var": (f, np.float64, 0.0),
            "next_loc": (f, np.float64, nan),  # forecast of the next reading
            "next_scale": (f, np.float64, nan),
            "last_loc": (f, np.float64, nan),  # forecast the last reading was judged by
            "last_scale": (f, np.float64, nan),
            **{f"score_{name}": (shape, dtype, fill) for name, shape, dtype, fill in self.scores},
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
    """An arena's records and slot owners, copied at one instant, free slots too."""

    slot_ids: list[str | None]
    records: np.ndarray  # (capacity,) of record_dtype

    def pack(self) -> ArenaSnapshot:
        """The live streams' records (a gather over every slot: keep it off the loop)."""
        live = np.array([s for s, sid in enumerate(self.slot_ids) if sid is not None], np.int64)
        return ArenaSnapshot(
            [sid for sid in self.slot_ids if sid is not None], self.records.take(live)
        )


class StateArena:
    """Slots for up to `max_streams` streams of one model; grows by doubling.

    `arrays` names each field's column (a view into the records, plus `last_seen`);
    `compiled` is the records as compiled passes take them (float16 fields as uint16 bits),
    `states` the recurrent states as one (slots, states, layers, hidden) float32 array.
    Records are copied out and in whole by `take` and `put` (to persist, to restore).
    """

    def __init__(self, layout: ArenaLayout, capacity: int, max_streams: int) -> None:
        self.layout = layout
        self.max_streams = max_streams
        self.record_dtype = layout.record_dtype()
        self._fresh = np.zeros((), self.record_dtype)  # a fresh stream's record
        for name, (_, _, fresh) in layout.fields().items():
            if name not in _LOCAL_FIELDS:
                self._fresh[name] = fresh
        self._records = np.empty(0, self.record_dtype)  # (capacity,)
        self._last_seen = np.empty(0, np.float64)  # (capacity,) monotonic seconds, for the TTL
        self.arrays: dict[str, np.ndarray] = {}
        self._capacity = 0
        self._slots: dict[str, int] = {}
        self._recent = _Recent()
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

    def slot_lookup(self) -> Callable[[str], int | None]:
        """`slot_of` without a Python call per stream, valid until the next `restore`."""
        return self._slots.get

    def slots_of(self, stream_ids: list[str]) -> np.ndarray:
        """The slots of bound streams, in order: (len(stream_ids),) int64; KeyError if one is
        not bound.

        The arena remembers the slots of lists it is given more than once (`_Recent`) until a
        stream is released: a client that sends the same streams in the same order each
        time, as a gateway reporting its sensors each tick does, then costs one comparison
        of two lists instead of a dict lookup per stream."""
        n = len(stream_ids)
        if n < 2:  # itemgetter of one key gives the value, not a tuple; of none, an error
            return np.array([self._slots[sid] for sid in stream_ids], np.int64)
        known = self._recent.get(stream_ids)
        if known is not None:
            return known.copy()  # the caller's own, as a lookup's would be
        # One C call for all the lookups: a third less than map(dict.__getitem__, ...)
        slots = np.fromiter(operator.itemgetter(*stream_ids)(self._slots), np.int64, n)
        if self._recent.admits(stream_ids):  # kept as the ids the arena holds anyway
            self._recent.put(list(operator.itemgetter(*slots.tolist())(self._ids)), slots.copy())
        return slots

    def remembers(self, stream_ids: list[str]) -> bool:
        """Whether the arena remembers this list's slots (`slots_of`): then its streams are
        bound here and distinct, which the engine need not check again."""
        return len(stream_ids) > 1 and self._recent.get(stream_ids) is not None

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
        self._records[slot]["threshold"] = threshold
        self._slots[stream_id] = slot
        self._ids[slot] = stream_id
        return slot

    def release(self, stream_id: str) -> None:
        slot = self._slots.pop(stream_id)
        self._recent.clear()  # its slot may go to another stream
        self._ids[slot] = None
        self._free.append(slot)

    def reset(self, slots: np.ndarray | int) -> None:
        """Return slots to a fresh stream's values."""
        self._records[slots] = self._fresh
        self._last_seen[slots] = 0.0

    def rewarm(self, slots: np.ndarray, keep: tuple[str, ...] = ()) -> np.ndarray:
        """Give `slots` a fresh stream's values, except the fields named in `keep`; returns
        their records as they were (to `write_records` back should the caller change its
        mind)."""
        before = self.take(slots)
        records = before.copy()
        for name in self.record_dtype.names or ():
            if name not in keep:
                records[name] = self._fresh[name]
        np.put(self._records, slots, records)
        return before

    def take(self, slots: np.ndarray) -> np.ndarray:
        """Copies of the records of `slots`: (len(slots),) of record_dtype."""
        # take, not records[slots]: a structured fancy index copies field by field, ~8x slower
        return self._records.take(slots)

    def put(self, slots: np.ndarray, records: np.ndarray, seen_at: float) -> None:
        """Store records (of record_dtype) into distinct `slots`; they count as seen at
        `seen_at` (monotonic seconds)."""
        if records.dtype != self.record_dtype:
            raise ValueError(f"records of {records.dtype}, the arena keeps {self.record_dtype}")
        np.put(self._records, slots, records)
        self._last_seen[slots] = seen_at

    def read_records(self, slots: np.ndarray) -> np.ndarray:
        """Copies of the persisted fields of `slots`, one record each."""
        return self.take(slots)

    def write_records(self, slots: np.ndarray, records: np.ndarray) -> None:
        """Put records (of `record_dtype`) into `slots`; they count as just seen."""
        self.put(slots, records, time.monotonic())

    def copy(self) -> ArenaCopy:
        """Every stream as of now: a plain copy of the records and of the slot owners."""
        return ArenaCopy(list(self._ids), self._records.copy())

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
        self._records[n:] = self._fresh
        self._last_seen[n:] = 0.0
        self._slots = dict(zip(stream_ids, range(n), strict=True))
        self._recent.clear()
        self._ids = [*stream_ids, *([None] * (self._capacity - n))]
        self._free = list(range(self._capacity - 1, n - 1, -1))
        self._records[:n] = snapshot.records
        self._last_seen[:n] = time.monotonic()

    def idle_since(self, cutoff: float) -> list[str]:
        """Streams whose last reading arrived before `cutoff` (monotonic seconds)."""
        live = np.flatnonzero(self._last_seen < cutoff)
        return [sid for slot in live if (sid := self._ids[slot]) is not None]

    def _grow(self, capacity: int) -> None:
        old = self._capacity
        records = np.empty(capacity, self.record_dtype)  # (capacity,)
        records[:old] = self._records
        records[old:] = self._fresh
        last_seen = np.zeros(capacity, np.float64)
        last_seen[:old] = self._last_seen
        self._records, self._last_seen = records, last_seen
        self.arrays = {name: records[name] for name in self.record_dtype.names or ()}
        self.arrays["last_seen"] = last_seen
        self.compiled = records.view(_compiled_dtype(self.record_dtype))
        self.states = _states_view(records, self.layout)
        self._ids.extend([None] * (capacity - old))
        self._free.extend(range(capacity - 1, old - 1, -1))  # pop() hands out low slots first
        self._capacity = capacity


def _compiled_dtype(record_dtype: np.dtype) -> np.dtype:
    """`record_dtype` as compiled code takes it: float16 fields as their uint16 bits."""
    fields = cast(dict[str, tuple[np.dtype, int]], record_dtype.fields)
    spec: list[Any] = []
    for name in record_dtype.names or ():
        dtype = fields[name][0]
        spec.append((name, np.uint16 if dtype.base == np.float16 else dtype.base, dtype.shape))
    return np.dtype(spec)  # packed, as record_dtype is: the same offsets


def _states_view(records: np.ndarray, layout: ArenaLayout) -> np.ndarray:
    """The records' recurrent states as one float32 array (slots, states, layers, hidden)."""
    names = [f"state_{name}" for name in layout.state_names]
    offset = cast(dict[str, tuple[np.dtype, int]], records.dtype.fields)[names[0]][1]
    per_state = layout.num_layers * layout.hidden_size
    assert [records.dtype.fields[n][1] for n in names] == [  # type: ignore[index]
        offset + 4 * per_state * k for k in range(len(names))
    ], "the state fields lie side by side"
    width = 4 * per_state * len(names)
    raw = records.view(np.uint8).reshape(len(records), records.dtype.itemsize)
    return raw[:, offset : offset + width].view(np.float32).reshape(
        len(records), len(names), layout.num_layers, layout.hidden_size
    )


class _Recent:
    """The slots of stream-id lists looked up more than once, while no stream is released.

    Only a list of distinct streams is remembered. A list is known by its length and its
    first and last ids, and is the one remembered if the two lists are equal: for ids fresh
    from JSON that compares each pair of strings once, where a dict lookup per stream also
    reads the stored key, a cache miss at 100,000 streams (slot lookups were 8% of the server
    at 500 readings a WebSocket frame). A list is remembered the second time it is looked up,
    as the arena's own id objects: keeping each list a client sent, once or more, would keep
    its strings alive for nothing (WebSocket frames of 500 ran 9% slower so).
    """

    LISTS = 256  # lists remembered, oldest forgotten first ...
    IDS = 1 << 18  # ... holding this many ids in all at most
    SEEN = 4096  # lists looked up once, known by their length and ends only

    def __init__(self) -> None:
        self._lists: dict[tuple[int, str, str], tuple[list[str], np.ndarray]] = {}
        self._ids = 0
        self._seen: dict[tuple[int, str, str], None] = {}

    def get(self, stream_ids: list[str]) -> np.ndarray | None:
        known = self._lists.get(_known_by(stream_ids))
        if known is None or known[0] != stream_ids:
            return None
        return known[1]

    def admits(self, stream_ids: list[str]) -> bool:
        """Whether to remember this list now: the second time it is looked up."""
        key, seen = _known_by(stream_ids), self._seen
        if key in seen:
            del seen[key]
            return len(stream_ids) <= self.IDS
        if len(seen) >= self.SEEN:
            del seen[next(iter(seen))]
        seen[key] = None
        return False

    def put(self, stream_ids: list[str], slots: np.ndarray) -> None:
        n, key, lists = len(stream_ids), _known_by(stream_ids), self._lists
        if len(set(stream_ids)) < n:  # a stream twice: not what `StateArena.remembers` says
            return
        if key in lists:
            self._ids -= len(lists.pop(key)[0])
        while lists and (len(lists) >= self.LISTS or self._ids + n > self.IDS):
            self._ids -= len(lists.pop(next(iter(lists)))[0])
        lists[key] = (stream_ids, slots)
        self._ids += n

    def clear(self) -> None:
        self._lists.clear()
        self._ids = 0


def _known_by(stream_ids: list[str]) -> tuple[int, str, str]:
    return len(stream_ids), stream_ids[0], stream_ids[-1]
