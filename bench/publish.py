"""The publisher of the cross-process fan-out: a third process, outside both servers.

    python -m bench.publish MESSAGES

BENCH_APP and BENCH_BACKEND name what to publish through, as each stack documents it: raw publishes
on the Redis channel its servers listen to, Channels calls ``channel_layer.group_send``, tether calls
``broadcast``. Each first connects to its broker (one message to a group nobody is in), then prints
``T0 <epoch ms>`` just before the first message, and ``SENT <n>`` after the last.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.apps.settings")
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402


def _payloads(count: int) -> list[str]:
    return [f"m{i} {'x' * 24}" for i in range(count)]


async def _publish(count: int) -> None:
    app = settings.APP
    payloads = _payloads(count)
    if app == "raw":
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        await client.ping()
        print(f"T0 {time.time() * 1000:.3f}", flush=True)
        for text in payloads:
            await client.publish(settings.GROUP, text)
        await client.aclose()
    elif app == "channels":
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        await layer.group_send("warmup", {"type": "bench.message", "text": "warmup"})  # connects
        print(f"T0 {time.time() * 1000:.3f}", flush=True)
        for text in payloads:
            await layer.group_send(settings.GROUP, {"type": "bench.message", "text": text})
    else:
        from tether import broadcast
        from tether.hub import stop_hub

        await broadcast("warmup", "warmup")  # starts the hub and connects its backend
        print(f"T0 {time.time() * 1000:.3f}", flush=True)
        for text in payloads:
            await broadcast(settings.GROUP, text)
        await stop_hub()
    print(f"SENT {count}", flush=True)


if __name__ == "__main__":
    asyncio.run(_publish(int(sys.argv[1])))
