from __future__ import annotations

import numpy as np
import pytest

from service.normalization import NormalizerParams, normalize_series
from service.series import Anomaly, Stream
from training.dataset import RECOVERY_READINGS, pack, prepare


def _stream(n: int, anomalies: tuple[Anomaly, ...] = (), channels: int = 1) -> Stream:
    rng = np.random.default_rng(n)
    mask = np.zeros(n, bool)
    for a in anomalies:
        mask[a.start : a.end] = True
    return Stream(
        stream_id=f"s{n}",
        timestamps=np.arange(n, dtype=np.float64),
        values=100.0 + rng.normal(size=(n, channels)).cumsum(axis=0),
        channels=tuple(f"c{i}" for i in range(channels)),
        anomaly_mask=mask,
        anomalies=anomalies,
    )


def test_per_stream_data_is_what_the_server_normalizer_produces() -> None:
    stream = _stream(1000)
    data = prepare([stream], segment_len=10_000)
    expected = normalize_series(stream.values, NormalizerParams())
    np.testing.assert_array_equal(data.calib.values[:, 0], expected)
    np.testing.assert_array_equal(data.train.values[:, 0], expected[:700])


def test_raw_data_is_kept_when_per_stream_is_off() -> None:
    stream = _stream(1000)
    data = prepare([stream], per_stream=False, segment_len=10_000)
    np.testing.assert_allclose(data.calib.values[:, 0], stream.values, rtol=1e-6)
    assert data.mean[0] == pytest.approx(stream.values[:700].mean(), rel=1e-5)


def test_held_out_parts_start_at_the_first_reading_but_count_only_their_targets() -> None:
    data = prepare([_stream(1000)], segment_len=10_000)
    assert data.val.values.shape == (850, 1, 1)
    assert data.calib.values.shape == (1000, 1, 1)
    np.testing.assert_array_equal(np.flatnonzero(data.val.mask[:, 0]), np.arange(700, 850))
    np.testing.assert_array_equal(np.flatnonzero(data.calib.mask[:, 0]), np.arange(850, 1000))


def test_labeled_anomalies_and_their_recovery_are_not_targets() -> None:
    anomaly = Anomaly("spike", 900, 903)
    data = prepare([_stream(1000, (anomaly,))], segment_len=10_000)
    excluded = np.arange(900, 903 + RECOVERY_READINGS)
    assert not data.calib.mask[excluded, 0].any()
    assert data.calib.mask[899, 0] and data.calib.mask[903 + RECOVERY_READINGS, 0]


def test_long_training_parts_are_cut_into_segments_with_a_burn_in() -> None:
    data = prepare([_stream(3000)], segment_len=500, burn_in=32)
    assert data.train.n_streams == 4  # 2100 training readings in about 500s
    assert data.train.mask[:32, 0].all()  # a stream's true start is what the server sees
    assert not data.train.mask[:32, 1:].any()
    assert data.train.mask[32:500, 1:].all()


def test_pack_pads_with_the_last_reading_and_does_not_count_the_padding() -> None:
    seqs = pack([(np.ones((3, 1)), np.ones(3, bool)), (np.full((5, 1), 2.0), np.ones(5, bool))])
    assert seqs.values.shape == (5, 2, 1)
    np.testing.assert_array_equal(seqs.values[:, 0, 0], [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(seqs.mask[:, 0], [True, True, True, False, False])
    assert seqs.n_targets == 2 + 4


def test_streams_with_different_channels_are_refused() -> None:
    with pytest.raises(ValueError, match="channels"):
        prepare([_stream(100), _stream(200, channels=2)])


def test_a_stream_too_short_to_split_is_refused() -> None:
    with pytest.raises(ValueError, match="too few to split"):
        prepare([_stream(4)])
