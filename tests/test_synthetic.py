from __future__ import annotations

import numpy as np
import pytest

from training.synthetic import ANOMALY_KINDS, SyntheticConfig, generate


def test_same_seed_gives_identical_streams_and_labels() -> None:
    config = SyntheticConfig(n_streams=4, length=600, seed=7)
    first, second = generate(config), generate(config)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.anomaly_mask, b.anomaly_mask)
        assert a.anomalies == b.anomalies


def test_another_seed_gives_other_streams() -> None:
    a = generate(SyntheticConfig(n_streams=1, length=300, seed=1))[0]
    b = generate(SyntheticConfig(n_streams=1, length=300, seed=2))[0]
    assert not np.allclose(a.values, b.values)


def test_adding_streams_keeps_the_earlier_ones() -> None:
    few = generate(SyntheticConfig(n_streams=2, length=400, seed=3))
    more = generate(SyntheticConfig(n_streams=5, length=400, seed=3))
    for a, b in zip(few, more[:2], strict=True):
        np.testing.assert_array_equal(a.values, b.values)


def test_anomalies_change_readings_only_inside_their_labels() -> None:
    clean = generate(SyntheticConfig(n_streams=30, length=800, anomalies_per_stream=0, seed=5))
    dirty = generate(SyntheticConfig(n_streams=30, length=800, anomalies_per_stream=2, seed=5))
    injected = 0
    for c, d in zip(clean, dirty, strict=True):
        assert not c.anomalies and not c.anomaly_mask.any()
        changed = np.any(c.values != d.values, axis=1)  # (time,)
        assert not (changed & ~d.anomaly_mask).any(), "a change outside every label"
        for anomaly in d.anomalies:
            assert changed[anomaly.start : anomaly.end].any(), anomaly
            injected += 1
    assert injected >= 20


def test_mask_is_exactly_the_union_of_the_labeled_windows() -> None:
    for stream in generate(SyntheticConfig(n_streams=10, length=1000, anomalies_per_stream=3)):
        expected = np.zeros(len(stream), bool)
        for anomaly in stream.anomalies:
            assert 0 < anomaly.start < anomaly.end <= len(stream)
            expected[anomaly.start : anomaly.end] = True
        np.testing.assert_array_equal(stream.anomaly_mask, expected)


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_each_kind_can_be_injected_alone(kind: str) -> None:
    config = SyntheticConfig(n_streams=20, length=1000, anomalies_per_stream=2, kinds=(kind,))
    kinds = {a.kind for s in generate(config) for a in s.anomalies}
    # frequency_change falls back to a shift on a stream without seasonality, but is
    # still labeled frequency_change: the label names what was asked for.
    assert kinds == {kind}


def test_streams_are_finite_with_timestamps_increasing() -> None:
    for stream in generate(SyntheticConfig(n_streams=20, length=500, channels=3, seed=11)):
        assert stream.values.shape == (500, 3)
        assert stream.channels == ("ch0", "ch1", "ch2")
        assert np.isfinite(stream.values).all()
        assert (np.diff(stream.timestamps) > 0).all()


def test_unknown_anomaly_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown anomaly kinds \\['meteor'\\]"):
        generate(SyntheticConfig(kinds=("meteor",)))
