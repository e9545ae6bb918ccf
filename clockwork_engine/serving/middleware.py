"""ASGI middleware of the HTTP API: the body size limit and the replica header."""

from __future__ import annotations

import os
import socket


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes gets 413 (declared or streamed); error(status,
    message) makes the response."""

    def __init__(self, app, limit: int, error):
        self.app, self.limit, self.error = app, limit, error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self.error(413, f"request body over {self.limit} bytes")(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self.error(413, f"request body over {self.limit} bytes")(scope, receive, send)


class _TooLarge(Exception):
    pass


class ReplicaHeader:
    """ASGI middleware: x-clockwork-replica (host:pid) names the server that answered (Ray Serve:
    the replica). Plain ASGI, not BaseHTTPMiddleware, so a dropped connection still reaches
    the endpoint as http.disconnect."""

    def __init__(self, app):
        self.app = app
        self.name = f"{socket.gethostname()}:{os.getpid()}".encode()

    async def __call__(self, scope, receive, send):
        async def named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-clockwork-replica", self.name)]}
            await send(message)

        await self.app(scope, receive, named if scope["type"] == "http" else send)
