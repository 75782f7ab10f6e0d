"""The state arena: slots, growth, reuse, records in and out."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import CapacityError
from service.state import ArenaLayout, ArenaSnapshot, StateArena

LAYOUT = ArenaLayout(state_names=("h", "c"), num_layers=2, hidden_size=3, channels=1)


def test_growth_by_doubling_keeps_every_stream_state() -> None:
    arena = StateArena(LAYOUT, capacity=2, max_streams=100)
    slots = np.array([arena.bind(f"s{i}", 0.9) for i in range(5)])
    assert arena.capacity == 8 and len(arena) == 5
    h = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)  # (batch, layers, hidden)
    arena.states[slots] = np.stack([h, -h], axis=1)
    arena.bind("s5", 0.9)  # no growth needed; existing rows untouched
    arena.bind("s8", 0.9)
    arena.bind("s9", 0.9)
    arena.bind("s10", 0.9)  # the ninth: grows
    assert arena.capacity == 16
    np.testing.assert_array_equal(arena.states[slots, 0], h)
    np.testing.assert_array_equal(arena.states[slots, 1], -h)


def test_the_states_view_is_the_records_state_fields() -> None:
    arena = StateArena(LAYOUT, capacity=2, max_streams=2)
    slot = arena.bind("a", 0.9)
    arena.states[slot, 1, 0] = [1.0, 2.0, 3.0]  # c, first layer
    assert arena.arrays["state_c"][slot].tolist() == [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
    assert not arena.arrays["state_h"][slot].any()
    assert arena.states.shape == (2, 2, 2, 3)  # (slots, states, layers, hidden)


def test_a_released_slot_is_reused_fresh() -> None:
    arena = StateArena(LAYOUT, capacity=1, max_streams=1)
    slot = arena.bind("a", 0.9)
    arena.arrays["count"][slot] = 7
    arena.states[slot] = 1.0
    arena.release("a")
    assert arena.bind("b", 0.5) == slot
    assert arena.arrays["count"][slot] == 0 and arena.arrays["threshold"][slot] == 0.5
    assert not arena.states[slot].any()
    assert "a" not in arena and arena.stream_id_of(slot) == "b"


def test_slots_of_a_list_looked_up_before_are_still_right() -> None:
    arena = StateArena(LAYOUT, capacity=4, max_streams=4)
    for sid in "abcd":
        arena.bind(sid, 0.9)

    def each(ids: list[str]) -> list[int | None]:
        return [arena.slot_of(sid) for sid in ids]

    for _ in range(3):  # the second time, the arena remembers it
        arena.slots_of(["a", "b", "c"])[:] = -1  # each call's array is its caller's own
    assert arena.slots_of(["a", "b", "c"]).tolist() == each(["a", "b", "c"])
    # a released stream's slot goes to another stream; the list gives the new slots
    old_b = arena.slot_of("b")
    arena.release("b")
    assert arena.bind("e", 0.9) == old_b
    arena.release("d")
    arena.bind("b", 0.9)
    assert arena.slots_of(["a", "b", "c"]).tolist() == each(["a", "b", "c"]) != [0, old_b, 2]
    arena.slots_of(["a", "b", "c"])  # remembered again
    # the same length and ends, another stream between: not the list remembered
    assert arena.slots_of(["a", "e", "c"]).tolist() == each(["a", "e", "c"])
    with pytest.raises(KeyError):
        arena.slots_of(["a", "d", "c"])


def test_the_arena_remembers_a_list_of_distinct_streams_only() -> None:
    arena = StateArena(LAYOUT, capacity=4, max_streams=4)
    for sid in "abc":
        arena.bind(sid, 0.9)
    assert not arena.remembers(["a", "b", "c"])  # not looked up yet
    for _ in range(3):
        arena.slots_of(["a", "b", "c"])
        arena.slots_of(["a", "b", "a"])  # a stream twice: the engine must not take it whole
    assert arena.remembers(["a", "b", "c"]) and not arena.remembers(["a", "b", "a"])
    assert arena.slots_of(["a", "b", "a"]).tolist() == [0, 1, 0]
    arena.release("c")  # forgets every list
    assert not arena.remembers(["a", "b", "c"])


def test_slots_of_after_a_restore_are_the_restored_ones() -> None:
    arena = StateArena(LAYOUT, capacity=4, max_streams=4)
    for sid in "abc":
        arena.bind(sid, 0.9)
    before = [arena.slots_of(["a", "b", "c"]).tolist() for _ in range(2)][0]  # remembered
    copy = arena.copy()
    arena.restore(ArenaSnapshot(["c", "b", "a"], copy.records[before[::-1]]))
    assert arena.slots_of(["a", "b", "c"]).tolist() == [2, 1, 0]


def test_the_cap_on_streams_is_a_capacity_error() -> None:
    arena = StateArena(LAYOUT, capacity=1, max_streams=2)
    arena.bind("a", 0.9)
    arena.bind("b", 0.9)
    with pytest.raises(CapacityError, match="2 streams"):
        arena.bind("c", 0.9)


def test_idle_streams_are_found_by_last_seen() -> None:
    arena = StateArena(LAYOUT, capacity=4, max_streams=4)
    for i, seen in enumerate([10.0, 50.0, 20.0]):
        arena.arrays["last_seen"][arena.bind(f"s{i}", 0.9)] = seen
    assert sorted(arena.idle_since(30.0)) == ["s0", "s2"]


def test_take_and_put_move_whole_records_and_mark_them_seen() -> None:
    arena = StateArena(LAYOUT, capacity=4, max_streams=4)
    slots = np.array([arena.bind(f"s{i}", 0.9) for i in range(3)])
    records = arena.take(slots[[2, 0]])
    records["count"] = [5, 7]
    records["state_h"][0] = np.arange(6.0).reshape(2, 3)
    arena.put(slots[[2, 0]], records, seen_at=123.0)
    again = arena.take(slots)
    assert again["count"].tolist() == [7, 0, 5]
    assert again["state_h"][2].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert arena.arrays["last_seen"][slots].tolist() == [123.0, 0.0, 123.0]
    with pytest.raises(ValueError, match="record"):
        arena.put(slots[:1], np.zeros(1, [("count", np.int64)]), seen_at=0.0)


def test_rewarm_gives_fresh_values_except_the_fields_kept_and_returns_the_old() -> None:
    arena = StateArena(LAYOUT, capacity=2, max_streams=2)
    slots = np.array([arena.bind("a", 0.5), arena.bind("b", 0.7)])
    for name in ("count", "seen"):
        arena.arrays[name][slots] = 9
    arena.arrays["mean"][slots] = 3.0
    before = arena.rewarm(slots[:1], keep=("seen", "threshold"))
    records = arena.take(slots)
    assert records["count"].tolist() == [0, 9] and records["seen"].tolist() == [9, 9]
    assert records["mean"].tolist() == [[0.0], [3.0]]
    assert records["threshold"].tolist() == [0.5, 0.7]
    assert np.isnan(records["next_loc"][0]).all()
    assert before["count"].tolist() == [9] and before["mean"].tolist() == [[3.0]]


def test_a_copy_packs_the_live_streams_records_as_of_the_copy() -> None:
    arena = StateArena(LAYOUT, capacity=4, max_streams=4)
    for i in range(3):
        arena.arrays["count"][arena.bind(f"s{i}", 0.9)] = 10 + i
    arena.release("s1")
    copy = arena.copy()
    arena.arrays["count"][arena.slot_of("s0")] = 99  # after the copy: not in it
    snapshot = copy.pack()
    assert snapshot.stream_ids == ["s0", "s2"]
    assert snapshot.records.dtype == arena.record_dtype
    assert snapshot.records["count"].tolist() == [10, 12]
    restored = StateArena(LAYOUT, capacity=1, max_streams=4)
    restored.restore(snapshot)
    assert restored.take(np.array([restored.slot_of("s2")]))["count"].tolist() == [12]
