"""Results built in bulk from arena records."""

from __future__ import annotations

import numpy as np

from service.results import (
    ANOMALY,
    GAP,
    OPENED,
    SCORED,
    WARMING,
    AlertRef,
    Reading,
    Result,
    results_of,
)
from service.state import ArenaLayout

LAYOUT = ArenaLayout(state_names=("h",), num_layers=1, hidden_size=2, channels=2)


def test_results_carry_each_records_fields_and_only_scored_readings_a_forecast() -> None:
    records = np.zeros(3, LAYOUT.record_dtype())
    records["last_loc"] = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    records["last_scale"] = 0.5
    records["last_score"] = [0.1, 0.9999, 0.2]
    records["threshold"] = [0.99, 0.99, 0.5]
    records["last_flags"] = [SCORED | WARMING, SCORED | ANOMALY | OPENED, GAP]
    readings = [Reading(f"s{i}", 10.0 + i, (0.0, 0.0)) for i in range(3)]
    opened = AlertRef("a-1", "opened")

    results = results_of(readings, records, "m", {"s1": opened, "s2": opened}, duplicate=True)

    assert results == [
        Result("s0", 10.0, "m", [1.0, 2.0], [0.5, 0.5], 0.1, 0.99, False, True, False, True,
               None),
        Result("s1", 11.0, "m", [3.0, 4.0], [0.5, 0.5], 0.9999, 0.99, True, False, False, True,
               opened),
        # not scored: no forecast; no alert event on this reading, whatever the stream had
        Result("s2", 12.0, "m", None, None, 0.2, 0.5, False, False, True, True, None),
    ]
    assert all(type(r) is Result for r in results)


def test_no_readings_give_no_results() -> None:
    assert results_of([], np.zeros(0, LAYOUT.record_dtype()), "m", {}, duplicate=False) == []
