"""The floor: the tutorial's hand-written ASGI loop, no framework.

/ws/echo/ echoes text; /ws/sub/ adds the connection's ``send`` to a Python set and says "ready";
/ws/pub/ sends every text it gets to each ``send`` in the set (awaited one after the other), or,
with BENCH_BACKEND=redis, publishes it on a Redis channel that every process listens to;
/ws/auth/ loads the Django session named by the cookie and greets the user (refuses anonymous);
/ws/hello/ greets "bench" with no lookup at all (the unauthenticated handshake).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import django
from django.http.cookie import parse_cookie

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.apps.settings")
django.setup(set_prefix=False)

from importlib import import_module  # noqa: E402

from django.conf import settings  # noqa: E402
from django.contrib.auth import aget_user  # noqa: E402

SessionStore = import_module(settings.SESSION_ENGINE).SessionStore  # BENCH_SESSIONS picks the engine

subscribers: set[Any] = set()
_redis: Any = None


async def fan_out(text: str) -> None:
    message = {"type": "websocket.send", "text": text}
    for send in list(subscribers):
        try:
            await send(message)
        except OSError:
            subscribers.discard(send)


async def _listen() -> None:
    pubsub = _redis.pubsub()
    await pubsub.subscribe(settings.GROUP)
    async for item in pubsub.listen():
        if item["type"] == "message":
            await fan_out(item["data"].decode())


async def lifespan(receive: Any, send: Any) -> None:
    global _redis
    listener = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if settings.BACKEND == "redis":
                import redis.asyncio

                _redis = redis.asyncio.Redis.from_url(settings.REDIS_URL)
                listener = asyncio.create_task(_listen())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if listener:
                listener.cancel()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    path = scope["path"]
    while True:
        event = await receive()
        if event["type"] == "websocket.connect":
            if path == "/ws/auth/":
                headers = dict(scope["headers"])
                session = SessionStore(parse_cookie(headers.get(b"cookie", b"").decode()).get("sessionid"))
                user = await aget_user(type("Request", (), {"session": session})())
                if not user.is_authenticated:
                    await send({"type": "websocket.close", "code": 4401})
                    return
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.send", "text": user.get_username()})
                continue
            await send({"type": "websocket.accept"})
            if path == "/ws/hello/":
                await send({"type": "websocket.send", "text": "bench"})
            elif path == "/ws/sub/":
                subscribers.add(send)
                await send({"type": "websocket.send", "text": "ready"})
        elif event["type"] == "websocket.receive":
            text = event.get("text")
            if path == "/ws/echo/":
                await send({"type": "websocket.send", "text": text})
            elif path == "/ws/pub/":
                if _redis is not None:
                    await _redis.publish(settings.GROUP, text)
                else:
                    await fan_out(text)
        elif event["type"] == "websocket.disconnect":
            subscribers.discard(send)
            return
