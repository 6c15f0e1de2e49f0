"""Broadcasting from a process with no server: the memory backend reaches no one, and says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from tests.servers import ROOT

REDIS = {"BACKEND": "tether.backends.redis.RedisBackend", "OPTIONS": {"url": "redis://127.0.0.1:6379/0"}}


def manage(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m django ARGS`` on the test settings with Django's default logging (no LOGGING of ours)."""
    (tmp_path / "plain_settings.py").write_text("from tests.settings import *\ndel LOGGING\n")
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        "DJANGO_SETTINGS_MODULE": "plain_settings",
        "TETHER_TEST_SETTINGS": "{}",  # the default: the memory backend
    }
    return subprocess.run(
        [sys.executable, "-m", "django", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )


def test_tether_broadcast_with_the_memory_backend_fails_naming_the_setting(tmp_path: Path) -> None:
    """manage.py tether_broadcast with the default backend exits non-zero and names TETHER['BACKEND']."""
    result = manage(tmp_path, "tether_broadcast", "chat.lobby", '{"text": "hi"}')
    assert result.returncode != 0
    assert "Broadcast" not in result.stdout
    assert "Nothing sent" in result.stderr and "TETHER['BACKEND']" in result.stderr
    assert "RedisBackend" in result.stderr


def test_tether_broadcast_command_error_in_process() -> None:
    """call_command raises CommandError (exit status 1 on the command line) with the memory backend."""
    with pytest.raises(CommandError, match=r"TETHER\['BACKEND'\]"):
        call_command("tether_broadcast", "chat.lobby", "hi")


def test_tether_broadcast_with_redis_still_succeeds(redis_server: None, capsys: pytest.CaptureFixture[str]) -> None:
    """With a cross-process backend the command broadcasts and reports it (the warning is for memory only)."""
    with override_settings(TETHER=REDIS):
        call_command("tether_broadcast", "chat.lobby", '{"text": "hi"}')
    assert capsys.readouterr().out == "Broadcast JSON message to chat.lobby\n"


def test_broadcast_sync_from_a_shell_warns_about_the_memory_backend(tmp_path: Path) -> None:
    """broadcast_sync() in `manage.py shell` with the memory backend prints the warning under default logging."""
    code = "from tether import broadcast_sync; broadcast_sync('chat.lobby', {'text': 'hi'}); print('returned')"
    result = manage(tmp_path, "shell", "-c", code)
    assert result.returncode == 0, result.stderr
    assert "returned" in result.stdout
    assert "broadcast_sync() with no server running in this process uses the memory backend" in result.stderr
    assert "TETHER['BACKEND']" in result.stderr
