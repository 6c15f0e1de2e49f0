from __future__ import annotations

import os
import socket

import pytest


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip loudly when a real service is down; under CI=true, fail instead."""
    if reachable(host, port):
        return
    message = f"{name} at {host}:{port} is unreachable"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: services must be up)")
    pytest.skip(f"!!! SKIPPED: {message} — start it to run this test !!!")


@pytest.fixture
def postgres() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)


@pytest.fixture
def redis_server() -> None:
    require_service("Redis", "127.0.0.1", 6379)
