"""A tiny local upstream that replays the recorded responses in tests/fixtures, for the proxy's tests.

The request header ``X-Fixture: NAME`` picks ``tests/fixtures/NAME.http``; the answer has its status, headers and
body verbatim, the body sent in small pieces (``X-Fixture-Chunk`` bytes, default 16, ``X-Fixture-Gap-Ms``
apart, default 1) so a proxy sees it cut everywhere. ``X-Fixture-Gzip: 1`` gzips the body when the request
accepts gzip, ``force`` always (an upstream that ignores ``Accept-Encoding: identity``). Like OpenAI and
DashScope, it sends the usage-only stream event (``choices: []`` with usage) only when the request asked for it
with ``stream_options.include_usage``. Every request is kept in ``requests``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from tests.casefiles import load_http

Message = MutableMapping[str, Any]


@dataclass
class SeenRequest:
    """What the upstream received."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None


def without_usage_event(body: bytes) -> bytes:
    """``body`` (an SSE stream with LF line ends) as an upstream sends it when usage was not asked for: without
    its usage-only events, and without the ``"usage":null`` that asking adds to every other chunk (OpenAI
    documents it; DashScope's compatible mode does it)."""
    events = body.split(b"\n\n")
    kept = []
    for event in events:
        data = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
        try:
            obj = json.loads(data[0]) if data else None
        except ValueError:
            obj = None
        if isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict):
            continue
        kept.append(event.replace(b',"usage":null', b"").replace(b'"usage":null,', b""))
    return b"\n\n".join(kept)


def asks_for_usage(body: bytes) -> bool:
    """Whether a JSON request body has ``stream_options.include_usage`` true."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    options = data.get("stream_options") if isinstance(data, dict) else None
    return isinstance(options, dict) and options.get("include_usage") is True


def fixture_body(name: str, request_body: bytes) -> bytes:
    """The body the fixture upstream sends for ``name`` to a request with ``request_body``."""
    fixture = load_http(name)
    body = fixture.body
    if fixture.headers.get("content-type", "").startswith("text/event-stream") and not asks_for_usage(request_body):
        body = without_usage_event(body)
    return body


class FixtureApp:
    """The ASGI app (see the module docstring)."""

    def __init__(self) -> None:
        self.requests: list[SeenRequest] = []

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        seen = SeenRequest(scope["method"], scope["path"], scope["query_string"], headers, body)
        self.requests.append(seen)
        name = seen.header("x-fixture")
        if name is None:
            await _send_all(send, 404, [(b"content-type", b"text/plain")], b"no X-Fixture header", 1 << 20, 0)
            return
        fixture = load_http(name)
        out = fixture_body(name, body)
        head = [(k.encode(), v.encode()) for k, v in fixture.headers.items() if k not in ("content-length",)]
        gzip_mode = seen.header("x-fixture-gzip")
        # "1": when the request accepts gzip; "force": always, as an upstream ignoring Accept-Encoding would
        if gzip_mode == "force" or (gzip_mode == "1" and "gzip" in (seen.header("accept-encoding") or "")):
            out = gzip.compress(out, mtime=0)  # no timestamp: the same body compresses to the same bytes
            head.append((b"content-encoding", b"gzip"))
        size = int(seen.header("x-fixture-chunk") or 16)
        gap = float(seen.header("x-fixture-gap-ms") or 1) / 1000
        await _send_all(send, fixture.status, head, out, size, gap)


async def _send_all(
    send: Callable[[Message], Awaitable[None]],
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    size: int,
    gap: float,
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    for start in range(0, len(body), size):
        await send({"type": "http.response.body", "body": body[start : start + size], "more_body": True})
        if gap:
            await asyncio.sleep(gap)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@dataclass
class FixtureServer:
    """A running fixture upstream: ``url`` is its origin, ``app.requests`` what it received."""

    app: FixtureApp
    url: str


@contextmanager
def run_fixture_server() -> Iterator[FixtureServer]:
    """Serve a :class:`FixtureApp` on 127.0.0.1 (ephemeral port) in a thread for the ``with`` block."""
    app = FixtureApp()
    with serve_asgi(app) as url:
        yield FixtureServer(app, url)


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Serve the ASGI ``app`` on 127.0.0.1 (ephemeral port) in a thread for the ``with`` block; yields its origin."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", log_config=None, lifespan="off", loop="asyncio", http="h11")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.002)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
