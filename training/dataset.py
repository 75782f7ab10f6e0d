"""Streams made ready for the loop: normalized, split in time, packed into padded arrays.

Each stream is split in time: the first part trains, the next part validates (early
stopping), the last part calibrates and measures. Held-out parts are evaluated by running
the model over the stream from its first reading, so the state is warm as it is on the
server, and counting only the held-out targets. With `per_stream`, every stream first goes
through `service.normalization.normalize_series`: the model sees offline exactly what the
server feeds it online.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.normalization import NormalizerParams, normalize_series
from service.series import Stream

RECOVERY_READINGS = 20  # after a labeled anomaly the state is still settling: not "normal"


class DatasetError(ValueError):
    """The streams cannot make a data set: none, mixed channels, or too short to split."""


@dataclass(frozen=True, eq=False)
class Sequences:
    """Streams packed side by side, padded at the end.

    `mask[t, s]` says whether reading t of stream s counts as a forecast target (the
    forecast made at t - 1): False for padding, labeled anomalies and parts held out.
    """

    values: np.ndarray  # (time, streams, channels) float32
    mask: np.ndarray  # (time, streams) bool

    @property
    def n_streams(self) -> int:
        return int(self.values.shape[1])

    @property
    def n_targets(self) -> int:
        return int(self.mask[1:].sum())


@dataclass(frozen=True, eq=False)
class Dataset:
    """The three parts of a data set, and the normalization fit on the training part."""

    train: Sequences  # segments of the training part, each from a zero state
    val: Sequences  # whole prefixes, targets in the validation part only
    calib: Sequences  # whole streams, targets in the calibration part only
    mean: np.ndarray  # (channels,)
    std: np.ndarray  # (channels,)
    channels: tuple[str, ...]
    per_stream: bool


def prepare(
    streams: list[Stream],
    *,
    per_stream: bool = True,
    val_fraction: float = 0.15,
    calib_fraction: float = 0.15,
    segment_len: int = 1024,
    burn_in: int = 32,
    normalizer: NormalizerParams | None = None,
) -> Dataset:
    """Normalize, split and pack `streams` (all with the same channels)."""
    if not streams:
        raise DatasetError("no streams to train on")
    channels = streams[0].channels
    params = normalizer if normalizer is not None else NormalizerParams()
    train_parts: list[tuple[np.ndarray, np.ndarray]] = []
    val_parts: list[tuple[np.ndarray, np.ndarray]] = []
    calib_parts: list[tuple[np.ndarray, np.ndarray]] = []
    for stream in streams:
        if stream.channels != channels:
            raise DatasetError(f"{stream.stream_id}: channels {stream.channels} != {channels}")
        n = len(stream)
        n_train = int(round(n * (1.0 - val_fraction - calib_fraction)))
        n_val_end = int(round(n * (1.0 - calib_fraction)))
        if n_train < 2 or n_val_end - n_train < 1 or n - n_val_end < 1:
            raise DatasetError(f"{stream.stream_id}: {n} readings are too few to split")
        values = normalize_series(stream.values, params) if per_stream else stream.values
        normal = _normal_mask(stream)
        train_parts += _segments(values[:n_train], normal[:n_train], segment_len, burn_in)
        val_parts.append((values[:n_val_end], _within(normal[:n_val_end], n_train)))
        calib_parts.append((values, _within(normal, n_val_end)))
    train = pack(train_parts)
    mean, std = _moments(train)
    return Dataset(
        train=train,
        val=pack(val_parts),
        calib=pack(calib_parts),
        mean=mean,
        std=std,
        channels=channels,
        per_stream=per_stream,
    )


def pack(parts: list[tuple[np.ndarray, np.ndarray]]) -> Sequences:
    """Stack (values (time, channels), mask (time,)) pairs, padding each to the longest."""
    length = max(len(v) for v, _ in parts)
    n_channels = parts[0][0].shape[1]
    values = np.empty((length, len(parts), n_channels), np.float32)  # (time, streams, channels)
    mask = np.zeros((length, len(parts)), bool)  # (time, streams)
    for s, (v, m) in enumerate(parts):
        values[: len(v), s] = v
        values[len(v) :, s] = v[-1]  # repeat the last reading: padding must stay finite
        mask[: len(m), s] = m
    return Sequences(values=values, mask=mask)


def _normal_mask(stream: Stream) -> np.ndarray:
    """True where a reading is normal: outside labeled anomalies and their recovery."""
    if stream.anomaly_mask is None:
        return np.ones(len(stream), bool)
    abnormal = stream.anomaly_mask.copy()
    for anomaly in stream.anomalies:
        abnormal[anomaly.end : anomaly.end + RECOVERY_READINGS] = True
    return ~abnormal


def _within(normal: np.ndarray, start: int) -> np.ndarray:
    mask = normal.copy()
    mask[:start] = False
    return mask


def _segments(
    values: np.ndarray, normal: np.ndarray, segment_len: int, burn_in: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut a long training part into segments, so one stream still fills a mini-batch.

    A segment that starts mid-stream starts from a zero state, which the server never does
    mid-stream: its first `burn_in` targets are not counted.
    """
    n = len(values)
    count = max(1, round(n / segment_len))
    bounds = np.linspace(0, n, count + 1).round().astype(int)
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        mask = normal[a:b].copy()
        if a > 0:
            mask[:burn_in] = False
        parts.append((values[a:b], mask))
    return parts


def _moments(train: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the normal training readings (the card's normalization)."""
    values = train.values[train.mask].astype(np.float64)  # (readings, channels)
    mean = values.mean(axis=0)
    # A floor relative to the level: a channel that never moves must not divide by zero.
    std = np.maximum(values.std(axis=0), 1e-6 * (1.0 + np.abs(mean)))
    return mean.astype(np.float32), std.astype(np.float32)
