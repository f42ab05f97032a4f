"""Settings from arguments, ``TRAINVITALS_*`` variables and a TOML file; bad ones fail clearly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from trainvitals.cli import main
from trainvitals.server import Settings


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trainvitals.toml"
    path.write_text(text)
    return path


def test_the_config_file_sits_below_variables_and_arguments(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = toml(tmp_path, 'stall_steps = 20\nresolve_after = 7\nport = 9000\n'
                'thresholds = ["loss>5:critical"]\nslack_webhook_urls = ["https://hooks.x/1"]\n'
                'retain_days = 30\n')
    monkeypatch.setenv("TRAINVITALS_CONFIG", str(path))
    from_file = Settings()
    assert (from_file.stall_steps, from_file.resolve_after, from_file.port) == (20, 7, 9000)
    assert from_file.thresholds == ["loss>5:critical"]
    assert from_file.slack_webhook_urls == ["https://hooks.x/1"]
    assert from_file.retain_days == 30.0
    monkeypatch.setenv("TRAINVITALS_RESOLVE_AFTER", "3")
    assert Settings().resolve_after == 3  # the variable beats the file
    assert Settings(resolve_after=4).resolve_after == 4  # the argument beats both
    monkeypatch.delenv("TRAINVITALS_CONFIG")
    assert Settings().stall_steps == 10  # no file named: defaults
    assert Settings(config=path).stall_steps == 20  # or name it as a setting


def test_unknown_or_invalid_keys_in_the_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"stall_step\n.*Extra inputs are not permitted"):
        Settings(config=toml(tmp_path, "stall_step = 20\n"))
    with pytest.raises(ValidationError, match="webhook_min_severity"):
        Settings(config=toml(tmp_path, 'webhook_min_severity = "info"\n'))
    with pytest.raises(ValueError, match="no such file"):
        Settings(config=tmp_path / "missing.toml")


def test_empty_token_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINVITALS_VIEW_TOKEN", "")
    monkeypatch.setenv("TRAINVITALS_INGEST_TOKEN", "")
    settings = Settings()
    assert settings.view_token is None and settings.ingest_token is None
    monkeypatch.setenv("TRAINVITALS_VIEW_TOKEN", "short")
    with pytest.raises(ValidationError, match="at least 8 characters"):
        Settings()


def test_webhook_urls_must_be_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINVITALS_WEBHOOK_URLS", '["ftp://example.org/x"]')
    with pytest.raises(ValidationError, match="must start with http"):
        Settings()


def test_serve_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag.rstrip("s") in text, name
        assert f"[env TRAINVITALS_{name.upper()}]" in text, name
        assert field.description and " ".join(field.description.split())[:30] in text, name


def serve(*args: str, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "trainvitals.cli", "serve", *args],
                            env={**os.environ, **(env or {})}, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--port", "70000"], {}, "port: Input should be less than or equal to 65535"),
    ([], {"TRAINVITALS_STALL_STEPS": "many"}, "stall_steps: Input should be a valid integer"),
    (["--config", "missing.toml"], {}, "config: no such file missing.toml"),
    (["--config", "bad.toml"], {}, "config: bad.toml is not valid TOML: Expected '=' after a "
     "key"),
])
def test_a_bad_setting_stops_serve_with_a_clear_message(
        tmp_path: Path, args: list[str], env: dict[str, str], message: str) -> None:
    (tmp_path / "bad.toml").write_text("port: 8765\n")
    proc = serve("--data-dir", str(tmp_path), *args, env=env, cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    (line,) = err.splitlines()  # one readable line, no traceback
    assert line.startswith(f"trainvitals: bad setting — {message}")


def test_serve_runs_with_a_config_file(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = toml(tmp_path, f'port = {port}\ndata_dir = "{tmp_path / "data"}"\n'
                  'ingest_token = "from-the-config-file"\nmetrics = false\n')
    proc = serve("--config", str(config))
    try:
        end = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < end, proc.stderr
                time.sleep(0.1)
        assert health.json()["status"] == "ok"
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
        assert (tmp_path / "data" / "trainvitals.sqlite3").exists()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
