"""Shared fixtures: settings on the bundled model, the ASGI app, an engine, a real server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.alerts import Alert
from service.app import create_app
from service.engine import Engine
from service.registry import ModelRegistry
from service.settings import BUNDLED_MODELS_DIR, Settings

MODELS_DIR = Path(os.environ.get("STREAMWATCH_TEST_MODELS_DIR", BUNDLED_MODELS_DIR))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings on the bundled model with a short batch wait, for tests."""
    base: dict[str, object] = {
        "model": {"dir": MODELS_DIR},
        "data_dir": tmp_path,
        "engine": {"max_wait_ms": 0.5},
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def sine(n: int, *, period: float = 50.0, noise: float = 0.05, seed: int = 0,
         level: float = 0.0, amplitude: float = 1.0) -> np.ndarray:
    """A noisy sine, (time,) float64: the stream most tests feed."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    return level + amplitude * np.sin(2 * np.pi * t / period) + noise * rng.normal(size=n)


@asynccontextmanager
async def running_engine(
    settings: Settings, events: list[tuple[str, Alert]] | None = None
) -> AsyncIterator[Engine]:
    """A started engine on `settings`; alert events are appended to `events`."""
    sink = events.extend if events is not None else (lambda _: None)
    engine = Engine(ModelRegistry.load(settings.model), settings, sink)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


def stream_state(engine: Engine, stream_id: str) -> dict[str, np.ndarray]:
    """Copies of every per-stream array of one stream's slot."""
    for stepper in engine.steppers().values():
        slot = stepper.arena.slot_of(stream_id)
        if slot is not None:
            return {
                name: array[slot].copy()
                for name, array in stepper.arena.arrays.items()
                if name != "last_seen"  # wall-clock time, not state
            }
    raise KeyError(stream_id)
