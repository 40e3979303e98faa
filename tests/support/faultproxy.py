"""A TCP proxy on loopback that a test can make misbehave, in front of an upstream or Redis.

It runs on the suite's :class:`BackgroundLoop`. Each new connection follows the mode in force
when it arrives; :meth:`FaultProxy.cut` resets the connections already open.

- ``pass``: forward both ways;
- ``refuse``: stop listening, so connecting is refused (``pass`` listens again on the same port);
- ``reset``: accept, then reset the connection (RST) at once;
- ``stall``: accept and read, never answer;
- ``slow``: forward, each piece from the server held ``delay_s`` first;
- ``truncate``: forward the first ``limit`` bytes from the server, then reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Literal

from tests.support.live import BackgroundLoop

Mode = Literal["pass", "refuse", "reset", "stall", "slow", "truncate"]

__all__ = ["FaultProxy", "Mode"]


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, bg: BackgroundLoop, target_port: int, *, target_host: str = "127.0.0.1"):
        self.bg = bg
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.mode: Mode = "pass"
        self.delay_s = 0.0
        self.limit = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # --- control, from the test's thread ---------------------------------------------------

    def start(self) -> FaultProxy:
        self.bg.run(self._listen())
        return self

    def set(self, mode: Mode, *, delay_s: float = 0.0, limit: int = 0) -> None:
        """New connections follow ``mode`` from now on (``refuse`` also stops listening)."""
        self.delay_s, self.limit = delay_s, limit
        self.bg.run(self._set(mode))

    def retarget(self, port: int) -> None:
        """Send new connections to another server (a failover)."""
        self.target_port = port

    def cut(self) -> None:
        """Reset every connection open now."""
        self.bg.call(self._cut)

    def close(self) -> None:
        self.bg.run(self._close())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- on the loop --------------------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set(self, mode: Mode) -> None:
        if mode == "refuse" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        elif mode != "refuse" and self._server is None:
            await self._listen()
        self.mode = mode

    def _cut(self) -> None:
        for writer in list(self._writers):
            _rst(writer)

    async def _close(self) -> None:
        self._cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        mode = self.mode
        if mode == "reset":
            _rst(writer)
            return
        self._writers.add(writer)
        try:
            if mode == "stall":
                while await reader.read(65536):
                    pass
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                _rst(writer)
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(
                    self._pipe(reader, up_writer, faulty=False),
                    self._pipe(up_reader, writer, faulty=True, mode=mode),
                )
            finally:
                self._writers.discard(up_writer)
                up_writer.transport.abort()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        faulty: bool,
        mode: Mode = "pass",
    ) -> None:
        sent = 0
        try:
            while data := await reader.read(65536):
                if faulty and mode == "slow":
                    await asyncio.sleep(self.delay_s)
                if faulty and mode == "truncate" and sent + len(data) >= self.limit:
                    writer.write(data[: self.limit - sent])
                    await writer.drain()
                    _rst(writer)
                    return
                writer.write(data)
                await writer.drain()
                sent += len(data)
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
