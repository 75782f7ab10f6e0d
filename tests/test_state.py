"""The state arena: slots, growth, reuse, gather and scatter."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import CapacityError
from service.state import ArenaLayout, StateArena

LAYOUT = ArenaLayout(state_names=("h", "c"), num_layers=2, hidden_size=3, channels=1, window=4)


def test_growth_by_doubling_keeps_every_stream_state() -> None:
    arena = StateArena(LAYOUT, capacity=2, max_streams=100)
    slots = np.array([arena.bind(f"s{i}", 0.9) for i in range(5)])
    assert arena.capacity == 8 and len(arena) == 5
    h = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)  # (layers, batch, hidden)
    arena.scatter_state(slots, (h, -h))
    arena.bind("s5", 0.9)  # no growth needed; existing rows untouched
    got_h, got_c = arena.gather_state(slots)
    np.testing.assert_array_equal(got_h, h)
    np.testing.assert_array_equal(got_c, -h)
    assert got_h.flags["C_CONTIGUOUS"]


def test_a_released_slot_is_reused_fresh() -> None:
    arena = StateArena(LAYOUT, capacity=1, max_streams=1)
    slot = arena.bind("a", 0.9)
    arena.arrays["count"][slot] = 7
    arena.scatter_state(np.array([slot]), (np.ones((2, 1, 3), np.float32),) * 2)
    arena.release("a")
    assert arena.bind("b", 0.5) == slot
    assert arena.arrays["count"][slot] == 0 and arena.arrays["threshold"][slot] == 0.5
    assert not arena.gather_state(np.array([slot]))[0].any()
    assert "a" not in arena and arena.stream_id_of(slot) == "b"


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
