"""Settings: one field per flag, TANDEM_* variables, secrets kept out of logs."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from tandem.server.cli import serve
from tandem.server.settings import ServerSettings


def test_every_field_is_a_flag_and_every_flag_a_field() -> None:
    flags = set(inspect.signature(serve).parameters)
    fields = set(ServerSettings.model_fields) - {"verified_version_dir"}  # set by the CLI itself
    assert flags == fields


def test_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_BUNDLE", "/b")
    monkeypatch.setenv("TANDEM_STUDENT", "s")
    monkeypatch.setenv("TANDEM_VARIANT", "bin-768, f32-768")
    monkeypatch.setenv("TANDEM_API_KEY", "sekret")
    monkeypatch.setenv("TANDEM_MAX_QUEUE", "7")
    monkeypatch.setenv("TANDEM_TRUNCATE", "false")
    settings = ServerSettings(max_queue=9)  # type: ignore[call-arg]  # flags win over the env
    assert settings.bundle == Path("/b") and settings.variant == ["bin-768", "f32-768"]
    assert settings.max_queue == 9 and settings.truncate is False
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "sekret"
    assert "sekret" not in repr(settings) and "sekret" not in str(settings.redacted())


def test_to_env_reproduces_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ServerSettings(
        bundle=Path("/b"), student="s", variant=["a-1", "b-2"], api_key="k", watch_current=True
    )
    for key, value in original.to_env().items():
        monkeypatch.setenv(key, value)
    assert ServerSettings() == original  # type: ignore[call-arg]


def test_an_empty_key_means_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_API_KEY", "")
    assert ServerSettings(bundle=Path("/b"), student="s").api_key is None
