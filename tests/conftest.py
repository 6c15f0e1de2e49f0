from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require(available: bool, message: str) -> None:
    """Skip loudly when something a test needs is missing; under CI=true, fail instead (.ci/run provides it)."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: .ci/run must provide it)")
    pytest.skip(f"!!! SKIPPED: {message} !!!")


def require_service(name: str, host: str, port: int) -> None:
    """A real service (PostgreSQL, Redis) must answer."""
    require(reachable(host, port), f"{name} at {host}:{port} is unreachable: start it to run this test")


def require_program(path: str, install: str) -> None:
    """A program from Debian's packages (chromium, nginx) must be installed."""
    require(Path(path).exists(), f"{path} is not installed ({install})")


@pytest.fixture
def postgres() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)


@pytest.fixture
def redis_server() -> None:
    require_service("Redis", "127.0.0.1", 6379)


@pytest.fixture(autouse=True)
def _fresh_login_cache() -> Iterator[None]:
    """Each test starts with tether's login cache empty (it is per process, like the hub)."""
    from tether.auth import forget_logins

    forget_logins(everything=True)
    yield
    forget_logins(everything=True)
