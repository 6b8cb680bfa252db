"""A loopback HTTP proxy between the bot and the homeserver, for tests that need
the homeserver to misbehave: subclasses delay or change requests on the way in
(``before_forward``) or rewrite responses on the way out (``rewrite``)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from bot.devtools.homeserver import free_loopback_port


class LoopbackProxy:
    def __init__(self, upstream: str) -> None:
        self._upstream = upstream.rstrip("/")
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        # At close, a /sync long poll the stopped bot left in flight is dropped: waiting
        # for it (aiohttp's default: up to 60 s) would hold the test for ~30 s.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        port = free_loopback_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def before_forward(self, request: web.Request, body: bytes) -> None:
        """Called before a request goes to the homeserver (e.g. to delay it)."""

    def rewrite(self, request: web.Request, status: int, data: bytes) -> bytes:
        """The response body the bot gets (unchanged by default)."""
        return data

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        await self.before_forward(request, body)
        keep = ("authorization", "content-type")
        headers = {k: v for k, v in request.headers.items() if k.lower() in keep}
        async with self._session.request(
            request.method, self._upstream + request.path_qs, data=body or None, headers=headers
        ) as upstream:
            data = await upstream.read()
            status = upstream.status
            ctype = upstream.headers.get("Content-Type", "application/json")
        data = self.rewrite(request, status, data)
        return web.Response(body=data, status=status, headers={"Content-Type": ctype})
