"""Results built in bulk from arena records."""

from __future__ import annotations

import numpy as np

from service.errors import OutOfOrderError
from service.results import (
    ANOMALY,
    GAP,
    OPENED,
    SCORED,
    WARMING,
    AlertRef,
    Result,
    ResultBlock,
    alert_events,
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
    ids, ts = ["s0", "s1", "s2"], np.array([10.0, 11.0, 12.0])
    opened = AlertRef("a-1", "opened")
    alerts = alert_events(ids, records["last_flags"], {"s1": opened, "s2": opened}, {})

    results = ResultBlock("m", ids, ts, records, np.ones(3, bool), alerts).outcomes()

    assert results == [
        Result("s0", 10.0, "m", [1.0, 2.0], [0.5, 0.5], 0.1, 0.99, False, True, False, True,
               None),
        Result("s1", 11.0, "m", [3.0, 4.0], [0.5, 0.5], 0.9999, 0.99, True, False, False, True,
               opened),
        # not scored: no forecast; no alert event on this reading, whatever the stream had
        Result("s2", 12.0, "m", None, None, 0.2, 0.5, False, False, True, True, None),
    ]
    assert all(type(r) is Result for r in results)


def test_a_refused_reading_is_its_error_and_has_no_alert_event() -> None:
    records = np.zeros(2, LAYOUT.record_dtype())
    records["last_flags"] = SCORED | OPENED
    opened = AlertRef("a-1", "opened")
    error = OutOfOrderError("too old")
    alerts = alert_events(["s0", "s1"], records["last_flags"], {"s0": opened, "s1": opened},
                          {1: error})

    results = ResultBlock("m", ["s0", "s1"], np.array([1.0, 2.0]), records,
                          np.zeros(2, bool), alerts, {1: error}).outcomes()

    assert alerts == {0: opened}
    assert results[0].alert == opened and results[0].duplicate is False
    assert results[1] is error


def test_no_readings_give_no_results() -> None:
    empty = ResultBlock("m", [], np.zeros(0), np.zeros(0, LAYOUT.record_dtype()),
                        np.zeros(0, bool))
    assert empty.outcomes() == []
