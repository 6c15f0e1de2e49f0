"""A third process chatting in the chat example over the protocol, across server restarts.

``python -m tests.chat_publisher HTTP_URL SESSIONID ROOM COUNT INTERVAL`` publishes
``"restart <n>/<COUNT>"`` for n = 0 ... COUNT-1 to the room's group with ``tether.client``, signed in
by the session cookie, ``INTERVAL`` seconds apart (the pace of a person, so a server restart falls
mid-conversation). When the connection drops it connects again (the server is restarting) and goes
on; a message whose publish got no reply is sent again with the same nonce, as the page does (the
chat then broadcasts the stored message rather than storing a second one). Prints ``published COUNT over CONNECTIONS connections`` at the end;
exits 1 after 60 s without a connection.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

from tether.client import connect

GIVE_UP = 60.0  # seconds without a connection


async def main(http_url: str, cookie: str, room: str, count: int, interval: float) -> None:
    ws_url = http_url.replace("http://", "ws://", 1) + "/ws/"
    headers = [("Cookie", f"sessionid={cookie}"), ("Origin", http_url)]
    n = 0
    run = uuid.uuid4().hex  # the nonces of this run: "<run>-<n>"
    last_connected = time.monotonic()
    connections = 0
    while n < count:
        try:
            async with connect(ws_url, additional_headers=headers, timeout=5) as client:
                last_connected = time.monotonic()
                connections += 1
                while n < count:
                    text = f"restart {n}/{count}"
                    await client.publish(f"chat.room.{room}", {"text": text, "nonce": f"{run}-{n}"})
                    n += 1
                    await asyncio.sleep(interval)  # pacing a producer, not waiting for state
        except Exception as exc:  # CommandError, OSError, websockets' errors: the server is restarting
            if time.monotonic() - last_connected > GIVE_UP:
                raise SystemExit(f"no connection for {GIVE_UP} s: {exc!r}") from exc
            await asyncio.sleep(0.1)  # try again soon
    print(f"published {count} over {connections} connections", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
