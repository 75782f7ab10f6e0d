"""Settings: environment, config file, constructor, in that order of weight."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_nested_environment_variables_and_a_toml_file(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "streamwatch.toml"
    config.write_text('[engine]\nmax_batch = 64\nmax_wait_ms = 9\n[state]\nttl_s = 60\n')
    monkeypatch.setenv("STREAMWATCH_CONFIG", str(config))
    monkeypatch.setenv("STREAMWATCH_ENGINE__MAX_WAIT_MS", "3")
    monkeypatch.setenv("STREAMWATCH_MODEL__ROUTES", '[{"pattern": "pump-*", "model": "pumps"}]')
    settings = Settings(alerts={"k": 2})
    assert settings.engine.max_batch == 64  # file
    assert settings.engine.max_wait_ms == 3.0  # environment beats file
    assert settings.state.ttl_s == 60
    assert settings.model.routes[0].model == "pumps"
    assert settings.alerts.k == 2 and settings.alerts.m == 3  # constructor, defaults kept


def test_unknown_and_invalid_settings_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(engine={"max_batchh": 3})
    with pytest.raises(ValidationError):
        Settings(engine={"max_batch": 0})
