"""The ORM inside handlers, against SQLite and the real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import SynchronousOnlyOperation
from django.db import connections

from tests.conftest import require_service
from tests.testapp.models import Message
from tether import CloseCode
from tether.testing import connect

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture(autouse=True)
async def _close_thread_connections() -> AsyncIterator[None]:
    """The async ORM's worker thread keeps its connections; close them so test databases can be dropped."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture(params=["default", "pg"])
def alias(request: pytest.FixtureRequest) -> str:
    if request.param == "pg":
        require_service("PostgreSQL", "127.0.0.1", 5432)
    return str(request.param)


async def test_async_orm_reads_and_writes_rows(alias: str) -> None:
    """A SocketView writes rows with acreate() and reads them back with async iteration."""
    await Message.objects.using(alias).acreate(room="other", text="not mine")
    async with connect(f"/ws/notes/lobby/?db={alias}") as ws:
        await ws.send_json({"text": "first"})
        assert await ws.receive_json() == {"texts": ["first"], "count": 2}
        await ws.send_json({"text": "second"})
        assert await ws.receive_json() == {"texts": ["first", "second"], "count": 3}
    assert [m.text async for m in Message.objects.using(alias).filter(room="lobby")] == ["first", "second"]


async def test_sync_to_async_runs_sync_orm_code(alias: str) -> None:
    """Sync ORM code wrapped in sync_to_async works inside a handler."""
    await Message.objects.using(alias).acreate(room="r", text="x")
    async with connect(f"/ws/orm/?db={alias}") as ws:
        await ws.send_text("wrapped")
        assert await ws.receive_json() == {"count": 1}


async def test_unwrapped_sync_orm_closes_1011_with_django_error(alias: str) -> None:
    """A bare sync ORM call raises Django's SynchronousOnlyOperation: 1011, and the test sees the error."""
    with pytest.raises(SynchronousOnlyOperation):
        async with connect(f"/ws/orm/?db={alias}") as ws:
            await ws.send_text("bare")
            await ws.receive()
    async with connect(f"/ws/orm/?db={alias}", raise_app_exceptions=False) as ws:
        await ws.send_text("bare")
        assert await ws.wait_closed() == CloseCode.INTERNAL_ERROR
