"""System checks: each one triggered by its trap and silent without it."""

from __future__ import annotations

import logging
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from tether import checks, server


def _ids(messages: list[Any]) -> list[str]:
    return [message.id for message in messages]


def _without(monkeypatch: pytest.MonkeyPatch, *missing: str) -> None:
    """Make find_spec report ``missing`` packages as not installed (only for tether.checks)."""
    real = checks._find_spec

    def find_spec(name: str) -> ModuleSpec | None:
        return None if name in missing else real(name)

    monkeypatch.setattr(checks, "_find_spec", find_spec)


def test_uvicorn_without_websocket_library_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """E001: uvicorn with neither websockets nor wsproto names uvicorn[standard]."""
    _without(monkeypatch, "websockets", "wsproto")
    [error] = checks.check_websocket_server()
    assert error.id == "tether.E001" and "pip install 'uvicorn[standard]'" in error.msg


def test_uvicorn_with_one_websocket_library_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """E001 stays silent with wsproto alone, and without uvicorn at all."""
    _without(monkeypatch, "websockets")
    assert checks.check_websocket_server() == []
    _without(monkeypatch, "uvicorn", "websockets", "wsproto")
    assert checks.check_websocket_server() == []


@pytest.mark.parametrize("shadow", ["websockets.py", "websockets/__init__.py"])
def test_local_websockets_module_is_an_error(shadow: str, tmp_path: Path) -> None:
    """E002: a websockets.py or websockets/ package in BASE_DIR shadows the library."""
    (tmp_path / shadow).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / shadow).write_text("# my experiments\n")
    with override_settings(BASE_DIR=tmp_path):
        [error] = checks.check_websockets_shadowing()
    assert error.id == "tether.E002" and str(tmp_path / shadow) in error.msg and "rename" in error.msg


def test_no_local_websockets_module_passes(tmp_path: Path) -> None:
    """E002 stays silent for a clean project, and for a data directory named websockets/ (no __init__)."""
    (tmp_path / "websockets").mkdir()
    (tmp_path / "websockets" / "notes.txt").write_text("not a package")
    with override_settings(BASE_DIR=tmp_path):
        assert checks.check_websockets_shadowing() == []


def test_tether_not_installed_is_logged_at_startup(caplog: pytest.LogCaptureFixture) -> None:
    """W003: get_asgi_application() without tether in INSTALLED_APPS logs the fix."""
    from tether.asgi import get_asgi_application

    installed = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions", "tests.testapp"]
    with override_settings(INSTALLED_APPS=installed):
        [warning] = checks.check_installed()
        get_asgi_application()
    assert warning.id == "tether.W003" and 'add "tether" to INSTALLED_APPS' in warning.msg
    assert any(r.name == "tether.checks" and "tether.W003" in r.getMessage() for r in caplog.records)


def test_tether_installed_passes(caplog: pytest.LogCaptureFixture) -> None:
    """W003 stays silent when tether is installed (the test settings)."""
    from tether.asgi import get_asgi_application

    assert checks.check_installed() == []
    with caplog.at_level(logging.WARNING, "tether.checks"):
        get_asgi_application()
    assert not [r for r in caplog.records if r.name == "tether.checks"]


def test_asgi_module_without_tether_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W004: the stock asgi.py beside WSGI_APPLICATION's module, not using tether, is named."""
    project = tmp_path / "stockproject"
    project.mkdir()
    (project / "__init__.py").write_text("")
    (project / "asgi.py").write_text(
        "from django.core.asgi import get_asgi_application\napplication = get_asgi_application()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with override_settings(WSGI_APPLICATION="stockproject.wsgi.application"):
        [warning] = checks.check_asgi_module()
    assert warning.id == "tether.W004" and str(project / "asgi.py") in warning.msg
    assert "from tether.asgi import get_asgi_application" in warning.msg


def test_asgi_module_using_tether_passes() -> None:
    """W004 stays silent for an asgi.py that uses tether, and for a project without one."""
    with override_settings(ASGI_APPLICATION="tests.asgi.application"):
        assert checks.check_asgi_module() == []
    with override_settings(WSGI_APPLICATION="nosuchproject.wsgi.application"):
        assert checks.check_asgi_module() == []


def test_unknown_tether_setting_is_a_warning() -> None:
    """W005: a misspelt TETHER key is named."""
    with override_settings(TETHER={"MAX_MESAGE_SIZE": 10}):
        [warning] = checks.check_settings_keys()
    assert warning.id == "tether.W005" and "'MAX_MESAGE_SIZE'" in warning.msg


def test_known_tether_settings_pass() -> None:
    """W005 stays silent for documented keys."""
    with override_settings(TETHER={"MAX_MESSAGE_SIZE": 10, "CHECK_ORIGIN": True}):
        assert checks.check_settings_keys() == []


def test_memory_backend_without_debug_is_a_deploy_warning() -> None:
    """W010: check --deploy flags the memory backend with DEBUG off; plain check does not run it."""
    with override_settings(DEBUG=False, TETHER={}):
        assert "tether.W010" in _ids(run_checks(tags=["tether"], include_deployment_checks=True))
        assert "tether.W010" not in _ids(run_checks(tags=["tether"]))


def test_memory_backend_with_debug_or_another_backend_passes() -> None:
    """W010 stays silent with DEBUG on or with a shared backend."""
    with override_settings(DEBUG=True):
        assert checks.check_memory_backend_in_deployment() == []
    with override_settings(DEBUG=False, TETHER={"BACKEND": "tether.backends.redis.RedisBackend"}):
        assert checks.check_memory_backend_in_deployment() == []


def test_origin_check_disabled_is_a_deploy_warning() -> None:
    """W011: check --deploy flags CHECK_ORIGIN False."""
    with override_settings(TETHER={"CHECK_ORIGIN": False}):
        assert "tether.W011" in _ids(run_checks(tags=["tether"], include_deployment_checks=True))


def test_origin_check_enabled_passes() -> None:
    """W011 stays silent with the default."""
    assert checks.check_origin_checking() == []


def test_the_test_settings_pass_every_non_deploy_check() -> None:
    """The suite's own project triggers no tether check (all registered through TetherConfig.ready())."""
    assert _ids(run_checks(tags=["tether"])) == []


def test_w006_staticfiles_before_tether() -> None:
    """W006: staticfiles listed before tether takes runserver away from tether."""
    from tether.checks import check_runserver_order

    with override_settings(INSTALLED_APPS=["django.contrib.staticfiles", "tether"]):
        [warning] = check_runserver_order()
    assert warning.id == "tether.W006" and "move 'tether' above it" in warning.msg


def test_w006_silent_when_tether_comes_first() -> None:
    """W006 stays silent with tether first, or without staticfiles."""
    from tether.checks import check_runserver_order

    with override_settings(INSTALLED_APPS=["tether", "django.contrib.staticfiles"]):
        assert check_runserver_order() == []
    assert check_runserver_order() == []


@pytest.mark.parametrize("entry", ["*", "https://*", "http://*.", "https://*.*"])
def test_a_bare_wildcard_among_trusted_origins_is_flagged_on_deploy(entry: str) -> None:
    """W014: check --deploy flags a trusted origin that trusts every site."""
    with override_settings(CSRF_TRUSTED_ORIGINS=[entry]):
        assert "tether.W014" in _ids(run_checks(tags=["tether"], include_deployment_checks=True))
    with override_settings(TETHER={"ALLOWED_ORIGINS": [entry]}):
        assert "tether.W014" in _ids(run_checks(tags=["tether"], include_deployment_checks=True))


def test_subdomain_wildcards_among_trusted_origins_pass() -> None:
    with override_settings(CSRF_TRUSTED_ORIGINS=["https://*.example.com", "https://app.example.com:8443"]):
        assert "tether.W014" not in _ids(run_checks(tags=["tether"], include_deployment_checks=True))


# -- W020-W022: the server's limits against tether's ------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["uvicorn", "tests.asgi:application"], ["tether.W020", "tether.W022"]),  # uvicorn's defaults
        (
            ["/x/uvicorn/__main__.py", "tests.asgi:application", "--ws-ping-interval", "0"],
            ["tether.W020", "tether.W021", "tether.W022"],
        ),
        (
            ["uvicorn", "tests.asgi:application", "--ws-max-size", "1048576", "--timeout-graceful-shutdown", "10"],
            [],
        ),
        (["manage.py", "check"], []),  # not a server: tether can't tell
        (["gunicorn", "tests.asgi:application"], []),
    ],
)
def test_server_limits_read_from_uvicorns_command_line(
    argv: list[str], expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under uvicorn's command line tether parses its options and warns for each limit looser than its own."""
    monkeypatch.setattr(server, "_announced", None)
    monkeypatch.setattr("sys.argv", argv)
    assert _ids(checks.check_server_limits()) == expected


def test_server_limits_follow_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A larger MAX_MESSAGE_SIZE, or limits turned off in TETHER, silence the matching warnings."""
    monkeypatch.setattr(server, "_announced", None)
    monkeypatch.setattr("sys.argv", ["uvicorn", "tests.asgi:application", "--ws-ping-interval", "0"])
    with override_settings(
        TETHER={"MAX_MESSAGE_SIZE": 16 * 1024 * 1024, "PING_INTERVAL": None, "SHUTDOWN_TIMEOUT": None}
    ):
        assert checks.check_server_limits() == []


def test_serve_announces_its_options_so_the_checks_see_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """serve and runserver announce what they start uvicorn with; tether's own options pass."""
    monkeypatch.setattr(server, "_announced", None)
    monkeypatch.setattr("sys.argv", ["manage.py", "serve"])
    server.announce_server_options(server.uvicorn_options())
    assert checks.check_server_limits() == []
    server.announce_server_options({**server.uvicorn_options(), "ws_max_size": 16 * 1024 * 1024})
    [message] = checks.check_server_limits()
    assert message.id == "tether.W020" and "--ws-max-size 1048576" in message.msg


def test_server_limits_are_logged_at_startup_under_uvicorn(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn's command line runs no check command: the warnings are logged at startup instead."""
    monkeypatch.setattr(server, "_announced", None)
    monkeypatch.setattr("sys.argv", ["uvicorn", "tests.asgi:application"])
    with override_settings(SILENCED_SYSTEM_CHECKS=["tether.W022"]):
        checks.log_server_limits()
    logged = [r.getMessage() for r in caplog.records if r.name == "tether.checks"]
    assert len(logged) == 1 and "tether.W020" in logged[0]
