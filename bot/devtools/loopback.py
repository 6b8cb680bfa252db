"""Loopback networking for the embedded homeservers: free ports, a pausable TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import socket


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    There is a window between closing this socket and a server binding the port;
    :meth:`bot.devtools.homeserver.EmbeddedHomeserver.start` picks another port if it
    loses that race.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TcpProxy:
    """Forwards TCP connections from a loopback port to another, until paused.

    A partition between two homeservers: while paused, the proxy still owns its port
    (nothing else can take it) but closes every connection at once, and the ones
    already open are cut, so the other side sees a connection reset, as it would
    for a server that is down, and backs off. TLS passes through untouched.
    """

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self.paused = False
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._cut()
            # The connections' handlers end once their sockets are cut; wait for them,
            # so none is left pending when the event loop closes.
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=5)
            await self._server.wait_closed()
            self._server = None

    def pause(self) -> None:
        """Refuse new connections and cut the open ones."""
        self.paused = True
        self._cut()

    def resume(self) -> None:
        self.paused = False

    def _cut(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        if self.paused:
            writer.transport.abort()
            return
        self._open.add(writer)  # from now on a pause cuts it
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            self._open.discard(writer)
            writer.transport.abort()  # the target is down: so is the proxy, for the caller
            return
        if self.paused:  # paused while connecting
            up_writer.transport.abort()
            writer.transport.abort()
            return
        self._open.add(up_writer)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self._open.discard(end)
                end.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65_536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        if not writer.transport.is_closing():
            writer.write_eof()
