"""The anonymous handshake in-process: microseconds per handshake through tether's ASGI app and raw's.

No server, no sockets: each handshake is the app called with a websocket scope shaped like
uvicorn's (the load generator's headers: Host, Origin, the upgrade headers), a ``receive``
that returns ``websocket.connect`` then ``websocket.disconnect``, and a ``send`` that records
nothing. What it measures is the application's own Python work per handshake (``/ws/hello/``:
accept, greet, close), the part a server CPU-second spends in tether rather than in uvicorn.

    .venv/bin/python -m bench.handshake_inproc            # both apps, best of 5 rounds of 20000
    .venv/bin/python -m bench.handshake_inproc --profile  # and tether's cProfile, by own time
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import time
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.apps.settings")
os.environ.setdefault("BENCH_APP", "tether")

from bench.apps.raw import app as raw_app  # sets Django up
from bench.apps.tether_asgi import application as tether_app

HEADERS = [
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"connection", b"Upgrade"),
    (b"upgrade", b"websocket"),
    (b"origin", b"http://127.0.0.1:8001"),
    (b"host", b"127.0.0.1:8001"),
]


def scope() -> dict[str, Any]:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "ws",
        "server": ("127.0.0.1", 8001),
        "client": ("127.0.0.1", 51234),
        "root_path": "",
        "path": "/ws/hello/",
        "raw_path": b"/ws/hello/",
        "query_string": b"",
        "headers": list(HEADERS),
        "subprotocols": [],
        "state": {},
        "extensions": {"websocket.http.response": {}},
    }


class Protocol:
    """Stands in for a uvicorn protocol: ``send`` is a bound method, as uvicorn's is."""

    def __init__(self) -> None:
        self.events = iter(({"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}))
        self.sent = 0

    async def receive(self) -> dict[str, Any]:
        return next(self.events)

    async def send(self, message: dict[str, Any]) -> None:
        self.sent += 1


async def rounds(app: Any, count: int) -> float:
    """CPU seconds of this process for ``count`` handshakes, one after the other (CPU time, not wall
    time: on a shared machine other processes' work does not count)."""
    started = time.process_time()
    for _ in range(count):
        protocol = Protocol()
        await app(scope(), protocol.receive, protocol.send)
    return time.process_time() - started


async def measure(count: int, repeat: int) -> dict[str, float]:
    best: dict[str, float] = {}
    for name, app in (("raw", raw_app), ("tether", tether_app)):
        await rounds(app, 1000)  # warm
        best[name] = min([await rounds(app, count) for _ in range(repeat)]) / count * 1e6
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print tether's cProfile (by own time)")
    args = parser.parse_args()
    best = asyncio.run(measure(args.count, args.repeat))
    print(f"raw    {best['raw']:6.2f} us per handshake")
    print(f"tether {best['tether']:6.2f} us per handshake ({best['tether'] / best['raw']:.2f}x raw)")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        asyncio.run(rounds(tether_app, args.count))
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
