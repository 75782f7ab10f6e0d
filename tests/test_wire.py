"""Results written as JSON text from their arrays read the same, byte for byte, as the
results rendered one object each."""

from __future__ import annotations

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from service import dataplane
from service.results import (
    ANOMALY,
    CLOSED,
    GAP,
    OPENED,
    SCORED,
    WARMING,
    AlertRef,
    ResultBlock,
    ResultRuns,
)
from service.state import ArenaLayout

_FLAGS = st.sampled_from([0, SCORED, SCORED | WARMING, SCORED | ANOMALY | OPENED, GAP,
                          SCORED | CLOSED, SCORED | GAP | ANOMALY])
_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
_TIMES = st.one_of(st.integers(0, 253402300799).map(float),
                   st.floats(-62135596800.0, 253402300799.0))


@st.composite
def _blocks(draw: st.DrawFn) -> ResultBlock:
    channels = draw(st.sampled_from([1, 3]))
    n = draw(st.integers(1, 30))
    records = np.zeros(n, ArenaLayout(("h",), 1, 2, channels).record_dtype())
    records["last_loc"] = np.array(draw(st.lists(_FLOATS, min_size=n * channels,
                                                 max_size=n * channels))).reshape(n, channels)
    records["last_scale"] = np.array(draw(st.lists(_FLOATS, min_size=n * channels,
                                                   max_size=n * channels))).reshape(n, channels)
    records["last_score"] = draw(st.lists(_FLOATS, min_size=n, max_size=n))
    # a model's threshold, mostly: the same for every row
    records["threshold"] = draw(st.one_of(_FLOATS.map(lambda t: [t] * n),
                                          st.lists(_FLOATS, min_size=n, max_size=n)))
    records["last_flags"] = draw(st.one_of(_FLAGS.map(lambda f: [f] * n),
                                           st.lists(_FLAGS, min_size=n, max_size=n)))
    # a batch is mostly one time step of many streams, or a few
    times = draw(st.one_of(_TIMES.map(lambda t: [t] * n),
                           st.lists(st.sampled_from([0.0, 1.5, 1767225600.0]), min_size=n,
                                    max_size=n),
                           st.lists(_TIMES, min_size=n, max_size=n)))
    # stream ids as the engine keeps them; the text writer must not lean on their pattern
    ids = draw(st.lists(st.one_of(st.from_regex(r"\A[a-z0-9][a-z0-9._:@-]{0,12}\Z"),
                                  st.text(min_size=1, max_size=8)), min_size=n, max_size=n))
    alerted = draw(st.sets(st.integers(0, n - 1)))
    alerts = {j: AlertRef(f"alert-{j}", draw(st.sampled_from(["opened", "closed"])))
              for j in alerted}
    duplicate = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    model = draw(st.sampled_from(["default", 'a "quoted", model']))
    return ResultBlock(model, ids, np.array(times), records, duplicate, alerts)


@st.composite
def _runs(draw: st.DrawFn) -> ResultRuns:
    """Runs of rows of one or more blocks, as a batch's results come from several rounds."""
    runs, start = [], 0
    for block in draw(st.lists(_blocks(), min_size=1, max_size=3)):
        row = draw(st.integers(0, len(block) - 1))
        stop = start + draw(st.integers(0, len(block) - row))
        runs.append((block, row, start, stop))
        start = stop
    return ResultRuns(runs)


@settings(max_examples=200, deadline=None)
@given(_runs(), st.booleans(), st.sampled_from([None, {"seq": 7}, {"seq": "x"}]))
def test_results_written_from_their_arrays_are_the_rendered_results(
    results: ResultRuns, columns: bool, head: dict[str, object] | None
) -> None:
    entries = list(results.outcomes())
    body = dataplane.render_columns(entries) if columns else dataplane.render(entries)
    expected = orjson.dumps(body if head is None else {**head, **body})

    assert dataplane.answer([], results, columns, head) == expected
