"""A minimal HTTP forward proxy on 127.0.0.1 for the tests of outgoing proxy support.

It takes absolute-form requests (``POST http://host:port/path HTTP/1.1``), keeps their request lines in
``seen``, sends each to its origin with a relative target and ``Connection: close``, and relays the answer with
``Connection: close`` too (one request per connection: the relay then ends at the origin's end of stream, with
no framing to parse). ``Proxy-*`` headers are dropped and kept in ``proxy_headers``. Plain HTTP only (no
CONNECT): the tests' upstreams are local simulators.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class ForwardProxy:
    """The running proxy: its URL and what it saw."""

    url: str
    seen: list[str] = field(default_factory=list)
    proxy_headers: list[tuple[str, str]] = field(default_factory=list)


def _with_close(head: bytes) -> bytes:
    """A request or response head with its Connection header replaced by ``Connection: close``."""
    lines = [line for line in head.split(b"\r\n") if line and not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


async def _handle(proxy: ForwardProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head[:-4].split(b"\r\n")
        method, target, version = request_line.split(b" ", 2)
        proxy.seen.append(f"{method.decode()} {target.decode()}")
        parts = urlsplit(target.decode())
        kept = []
        length = 0
        for line in header_lines:
            name, _, value = line.partition(b":")
            if name.strip().lower().startswith(b"proxy-"):
                proxy.proxy_headers.append((name.strip().decode(), value.strip().decode()))
                continue
            if name.strip().lower() == b"content-length":
                length = int(value)
            kept.append(line)
        body = await reader.readexactly(length) if length else b""
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        out = b"\r\n".join([b" ".join([method, path.encode(), version]), *kept]) + b"\r\n\r\n"
        upstream_reader, upstream_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        upstream_writer.write(_with_close(out[:-4]) + body)
        await upstream_writer.drain()
        answer = await upstream_reader.readuntil(b"\r\n\r\n")
        writer.write(_with_close(answer[:-4]))
        while chunk := await upstream_reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        upstream_writer.close()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@contextmanager
def run_forward_proxy() -> Iterator[ForwardProxy]:
    """A forward proxy on a free port of 127.0.0.1, served from a thread, until the block ends."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, object] = {}

    async def serve() -> None:
        server = await asyncio.start_server(lambda r, w: _handle(proxy, r, w), "127.0.0.1", 0)
        holder["server"] = server
        port = server.sockets[0].getsockname()[1]
        proxy.url = f"http://127.0.0.1:{port}"
        started.set()
        async with server:
            with contextlib.suppress(asyncio.CancelledError):  # close() ends serve_forever this way
                await server.serve_forever()

    proxy = ForwardProxy(url="")
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield proxy
    finally:
        server = holder["server"]
        loop.call_soon_threadsafe(server.close)  # type: ignore[attr-defined]
        thread.join(10)
        loop.close()
