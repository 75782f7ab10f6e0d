"""The app factory that process managers import (several workers) sets up the process too."""

from __future__ import annotations

import gc

import pytest

from service.app import create_app_from_env
from tests.conftest import MODELS_DIR


def test_the_app_factory_applies_the_servers_gc_thresholds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = gc.get_threshold()
    monkeypatch.setenv("STREAMWATCH_MODEL__DIR", str(MODELS_DIR))
    monkeypatch.setenv("STREAMWATCH_SERVER__GC_THRESHOLDS", "[4321, 12, 13]")
    try:
        create_app_from_env()
        assert gc.get_threshold() == (4321, 12, 13)
    finally:
        gc.set_threshold(*before)
