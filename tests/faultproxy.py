"""An asyncio TCP proxy that breaks the network on command, for broker fault tests.

Put it between tether and Redis or PostgreSQL (``FaultProxy(5432)``, then point
the backend at ``proxy.port``) and the tests can do to the broker what a
network or a crashed host does, without stopping the machine's shared service:

- ``latency(s)``: every chunk waits ``s`` seconds before it is forwarded;
- ``blackhole()``: new connections are accepted and never answered, and open
  ones stop forwarding (a hung broker, a dropped route);
- ``cut()``: reset every open connection (a broker restart, a killed client);
- ``refuse()``: stop listening, so connecting fails (a broker that is down);
- ``restore()``: forward again, to new connections and to stalled open ones.

It runs on the test's event loop; ``accepted`` counts connections it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

__all__ = ["FaultProxy"]

_CHUNK = 65536


class FaultProxy:
    """Listens on a free port of 127.0.0.1 and forwards to ``127.0.0.1:target_port`` until told otherwise."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0
        self.delay = 0.0
        self._flowing = asyncio.Event()  # cleared while black-holed
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same one after ``refuse()``)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = int(sock.getsockname()[1])
        self._server = await asyncio.start_server(self._accept, sock=sock)

    async def close(self) -> None:
        """Stop listening and reset every connection. Idempotent."""
        self.refuse()
        await self.cut()

    def latency(self, seconds: float) -> None:
        """Delay every chunk, both ways, by ``seconds`` (0 to stop)."""
        self.delay = seconds

    def blackhole(self) -> None:
        """Accept connections but forward nothing more, in either direction, until ``restore()``."""
        self._flowing.clear()

    def refuse(self) -> None:
        """Stop listening: new connections are refused (open ones are left alone; ``cut()`` them)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()

    async def cut(self) -> None:
        """Reset every open connection, both sides, and wait until they are gone."""
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def restore(self) -> None:
        """Forward again: no latency, no black hole, listening."""
        self.delay = 0.0
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        # a task of our own: cancelling asyncio's client_connected_cb task makes it log an error
        task = asyncio.get_running_loop().create_task(self._serve(client_reader, client_writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()  # a black-holed connection waits here, unanswered
            try:
                upstream_reader, upstream = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._writers.add(upstream)
            await asyncio.gather(self._pump(client_reader, upstream), self._pump(upstream_reader, client_writer))
        finally:
            for writer in (client_writer, upstream):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(_CHUNK):
                if self.delay:
                    await asyncio.sleep(self.delay)  # the fault itself, not a wait for state
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()  # one side closed: close the other, as a broker's socket would
