"""The `tether` logger hierarchy: connection lines at INFO, rejections at WARNING, crashes at ERROR."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from tether.testing import Rejected, connect


@pytest.mark.django_db(transaction=True)
async def test_connection_lines_carry_path_user_code_and_duration(caplog: pytest.LogCaptureFixture) -> None:
    """One INFO line when a socket is routed, one when it ends: path, client, user id, close code, duration."""
    user = await User.objects.acreate(username="ann")
    async with connect("/ws/auth/whoami/", user=user) as ws:
        await ws.receive_json()
    opened, closed = [r for r in caplog.records if r.name == "tether.connection"]
    assert opened.levelname == closed.levelname == "INFO"
    assert opened.getMessage() == "websocket /ws/auth/whoami/ connecting from 127.0.0.1:50000"
    message = closed.getMessage()
    assert message.startswith("websocket /ws/auth/whoami/ closed with 1000 after ")
    assert message.endswith(f"s (user {user.pk})")


async def test_every_logger_is_under_tether(caplog: pytest.LogCaptureFixture) -> None:
    """Rejections (WARNING) and crashes (ERROR, with traceback) come from the tether hierarchy."""
    with pytest.raises(Rejected):
        async with connect("/ws/echo/", origin="https://evil.example"):
            pass
    async with connect("/ws/boom/", raise_app_exceptions=False) as ws:
        await ws.send_text("now")
        await ws.wait_closed()
    levels = {(r.name, r.levelname) for r in caplog.records}
    assert ("tether.security", "WARNING") in levels and ("tether.routing", "ERROR") in levels
    assert all(r.name.startswith("tether.") for r in caplog.records)
    [crash] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert crash.exc_info is not None and "boom: now" in str(crash.exc_info[1])
