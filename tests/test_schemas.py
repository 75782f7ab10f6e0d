"""Rendering for the wire: results' timestamps in bulk."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.alerts import iso
from service.schemas import iso_many


@given(st.lists(st.one_of(st.integers(0, 253402300799).map(float),
                          st.floats(-1e9, 253402300798.0)), max_size=50))
def test_timestamps_render_in_bulk_exactly_as_one_by_one(timestamps: list[float]) -> None:
    assert iso_many(timestamps) == [iso(t) for t in timestamps]
    repeated = timestamps * 5  # a batch of few time steps across many streams
    assert iso_many(repeated) == [iso(t) for t in repeated]
