"""Daemon settings: user/system defaults, file, environment overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.settings import (
    SYSTEM_SOCKET,
    SYSTEM_STATE_DIR,
    SettingsError,
    default_socket_path,
    load_settings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("GEOD_STATE_DIR", "GEOD_SOCKET", "GEOD_DATABASE_URL", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


def test_user_defaults_follow_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.state_dir == tmp_path / "xdg-state" / "geod"
    assert settings.socket_path == settings.state_dir / "geod.sock"  # no runtime dir
    assert settings.socket_group is None and settings.concurrency == 2
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    assert load_settings().socket_path == Path("/run/user/1234/geod/geod.sock")
    assert default_socket_path() == Path("/run/user/1234/geod/geod.sock")
    monkeypatch.setenv("XDG_STATE_HOME", "relative/is/ignored")
    assert load_settings().state_dir == tmp_path / "home" / ".local" / "state" / "geod"


def test_system_defaults_and_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    system = load_settings(system=True)
    assert (system.state_dir, system.socket_path) == (SYSTEM_STATE_DIR, SYSTEM_SOCKET)
    monkeypatch.setenv("GEOD_STATE_DIR", "/srv/geod")
    monkeypatch.setenv("GEOD_SOCKET", "/tmp/g.sock")
    monkeypatch.setenv("GEOD_DATABASE_URL", "postgresql://db/geod")
    settings = load_settings(system=True)
    assert settings.state_dir == Path("/srv/geod")
    assert settings.socket_path == Path("/tmp/g.sock") == default_socket_path()
    assert settings.database_url == "postgresql://db/geod"


def test_file_values_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "geod.yml"
    path.write_text("concurrency: 4\nstate_dir: /srv/x\nsocket_group: nogroup\n")
    settings = load_settings(path)
    assert settings.concurrency == 4 and settings.socket_path == Path("/srv/x/geod.sock")
    path.write_text("concurrency: 1\nstate_dir: /srv/x\n")
    assert settings.reload().concurrency == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("concurency: 3\n", "geod.yml: concurency: unknown setting (did you mean 'concurrency'?)"),
        ("concurrency: 0\n", "geod.yml: concurrency: Input should be greater than or equal to 1"),
        ("socket_group: no-such-group-x\n", "socket_group: no group named 'no-such-group-x'"),
        ("log_level: LOUD\n", "geod.yml: log_level: Input should be 'DEBUG'"),
        ("- a list\n", "geod.yml: expected a mapping of settings at the top level"),
        ("concurrency: [\n", "geod.yml: line 2: expected the node content"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "geod.yml"
    path.write_text(text)
    with pytest.raises(SettingsError) as error:
        load_settings(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_explicit_file_is_an_error_default_file_is_optional(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="settings file not found"):
        load_settings(tmp_path / "absent.yml")
    assert load_settings().concurrency == 2
