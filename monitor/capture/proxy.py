"""The recording reverse proxy (``glm-monitor proxy``): any client or language, pointed at a route, is recorded.

``http://127.0.0.1:8787/<route>/...`` is forwarded to the route's endpoint (``/zai/chat/completions`` to
``https://api.z.ai/api/paas/v4/chat/completions``; see ``monitor.capture.routes``). Method, path, query, headers
(``Authorization`` and ``x-api-key`` included: forwarded, never stored) and body go upstream unchanged except for
hop-by-hop headers; the response comes back unchanged and unbuffered, chunk by chunk, still compressed if it was
(the recorder gets the decoded bytes). ``X-Monitor-App: name`` names the app the request is recorded for and is
not forwarded. Each POST is recorded as one ``UsageEvent`` (source ``proxy``) through ``monitor.capture.recorder``.

One change is made on purpose: an OpenAI-dialect streaming request that does not ask for usage
(``stream_options.include_usage``) is sent upstream asking for it, with ``Accept-Encoding: identity``, and the
usage-only event that this adds (``choices: []`` with ``usage``) is withheld from the client, which so gets the
events it would have got without the proxy while the tokens are still recorded. Every other event's bytes pass
verbatim, as soon as its first ``data:`` line shows it is not that event.

Failures: an upstream that cannot be reached gives the client a 502 with a small JSON body, an upstream timeout
before the response head a 504; both are recorded with their outcome (network_error, timeout). A failure after
the head closes the client's connection mid-body, as the upstream's did. A client that goes away closes the
upstream request and records what was seen, marked incomplete. The request body is read whole before it is sent
(it is parsed for model and stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import replace
from types import TracebackType
from typing import Any, NamedTuple

import aiohttp
import uvicorn
from yarl import URL

from monitor.asgi_drop import DropConnection, install_quiet_drop_filter
from monitor.capture.recorder import Exchange, RecorderStats, RequestInfo, Sink, parse_request
from monitor.capture.routes import Route, RouteTable, normalise_path
from monitor.capture.upstream import (
    APP_HEADER,
    Headers,
    UpstreamClient,
    body_decoder,
    is_hop_by_hop,
    response_headers,
)
from monitor.config import Settings
from monitor.exposure import required_token
from monitor.pricing import PriceCatalog
from monitor.providers import Provider
from monitor.redact import credentials, mask_values
from monitor.request_kind import request_kind
from monitor.signals import stop_on_signals

__all__ = [
    "DEFAULT_TIMEOUT",
    "ProxyApp",
    "ProxyServer",
    "UsageChunkFilter",
    "ask_for_usage",
    "build_app",
    "proxy_token",
    "run_in_thread",
    "serve",
]

log = logging.getLogger(__name__)
access = logging.getLogger("monitor.proxy.access")

DEFAULT_MAX_BODY = 32 * 2**20
"""The largest request body the proxy takes (``[proxy] max_body``); a larger one is answered 413 unread."""
DEFAULT_CLIENT_TIMEOUT = 60.0
"""How long a client may take to send its request body (``[proxy] client_timeout``); then 408."""
_PARSE_OFF_LOOP_BYTES = 1 << 20
_UNAUTHORIZED = "GLM Monitor proxy: this proxy requires its token in the X-Monitor-Token header"
_BAD_PATH = "GLM Monitor proxy: the path leaves its route (.. or an encoded slash); send a plain path"
_TOO_SLOW = "GLM Monitor proxy: the request body did not arrive in time"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=600.0)
"""Upstream timeouts: ``connect`` bounds reaching the upstream, ``sock_read`` the longest silence allowed (a
thinking model may be quiet for minutes); no bound on a whole stream."""

# What the upstream side raises: aiohttp's errors, and TimeoutError for a connect or read timeout.
_UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError)

_APP_MAX = 64  # the usage_events.app column
_MODEL_MAX = 128  # the usage_events.model column


# -- the usage request and its chunk ---------------------------------------------------------------------------

_INCLUDE_USAGE = b'"stream_options":{"include_usage":true}'


def ask_for_usage(body: bytes) -> bytes | None:
    """``body`` (a JSON object) with ``stream_options.include_usage`` set true, or None if it cannot be done.

    Without a ``stream_options`` key the member is inserted before the closing brace, so the rest of the body
    stays byte for byte as the client wrote it; otherwise the object is re-serialised.
    """
    text = body.strip()
    if not (text.startswith(b"{") and text.endswith(b"}")):
        return None
    if b"stream_options" not in text:
        inner = text[:-1].rstrip()
        return inner + (b"" if inner.endswith(b"{") else b",") + _INCLUDE_USAGE + b"}"
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return None
    data["stream_options"] = {**(options or {}), "include_usage": True}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


_EOL = re.compile(rb"\r\n|\r|\n")
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_HOLD, _PASS, _DROP = 0, 1, 2
_MAX_HELD = 1 << 20


def _usage_only(line: bytes) -> bool:
    """Whether an SSE ``data:`` line is an OpenAI usage-only chunk (``choices: []`` and a usage object)."""
    if not _EMPTY_CHOICES.search(line):
        return False
    try:
        obj = json.loads(line[5:])
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


# What include_usage adds to every other chunk ({"usage":null}; OpenAI documents it, DashScope does it too),
# as compact JSON writes it. Inside a JSON string a quote is escaped, so content can never look like this.
_NULL_USAGE = re.compile(rb',"usage":null(?=[,}])|"usage":null,')


class UsageChunkFilter:
    """Removes what asking for usage added to an OpenAI-dialect SSE stream: the usage-only events, and the
    ``"usage":null`` member of every other chunk; every other byte passes verbatim.

    ``feed`` takes the upstream's chunks (cut anywhere) and returns the bytes to send now; ``finish`` returns
    what is still held at the end of the stream. An event is held only until its first ``data:`` line is
    complete: then it is either passed (that line and everything after it, immediately) or dropped whole.
    Comment-only events pass at their end. ``withheld`` counts the bytes dropped.
    """

    __slots__ = ("_cr_dest", "_held", "_line", "_line_empty", "_mode", "withheld")

    def __init__(self) -> None:
        self._mode = _HOLD
        self._held = bytearray()  # the current event's bytes while it is undecided
        self._line = bytearray()  # the current line while the event is undecided
        self._line_empty = True
        # The previous chunk ended in CR: an LF opening the next one completes that line end and goes where the
        # CR went (_PASS, _DROP or _HOLD); None when there is no such CR.
        self._cr_dest: int | None = None
        self.withheld = 0

    def feed(self, chunk: bytes) -> bytes:
        """Take the next chunk; return the bytes that may go to the client now."""
        if (
            self._mode == _HOLD
            and not self._held
            and self._cr_dest is None
            and chunk.endswith(b"\n\n")
            and b"\r" not in chunk
            and _EMPTY_CHOICES.search(chunk) is None
        ):
            # The usual chunk: whole events, none of them a usage-only one; nothing to look at line by line.
            return _NULL_USAGE.sub(b"", chunk) if b'"usage":null' in chunk else chunk
        out = bytearray()
        pos = 0
        if self._cr_dest is not None and chunk:
            dest, self._cr_dest = self._cr_dest, None
            if chunk[0] == 0x0A:
                self._put(out, dest, b"\n")
                pos = 1
        end = len(chunk)
        while pos < end:
            m = _EOL.search(chunk, pos)
            if m is None:
                self._content(out, chunk[pos:])
                break
            if m.start() > pos:
                self._content(out, chunk[pos : m.start()])
            dest = self._line_end(out, m.group())
            pos = m.end()
            if pos == end and chunk[-1] == 0x0D:
                self._cr_dest = dest
        return bytes(out)

    def finish(self) -> bytes:
        """End of stream: the bytes of an event left undecided (a cut stream), which the client gets."""
        held = bytes(self._held) if self._mode == _HOLD else b""
        self._held.clear()
        self._line.clear()
        self._mode = _HOLD
        self._line_empty = True
        self._cr_dest = None
        return held

    def _put(self, out: bytearray, dest: int, data: bytes) -> None:
        if dest == _PASS:
            out += data
        elif dest == _DROP:
            self.withheld += len(data)
        else:
            self._held += data

    def _content(self, out: bytearray, data: bytes) -> None:
        self._line_empty = False
        if self._mode == _HOLD:
            self._held += data
            self._line += data
            if len(self._held) > _MAX_HELD:  # bounded memory: an event this big is no usage chunk
                self._pass(out)
        else:
            self._put(out, self._mode, data)

    def _pass(self, out: bytearray) -> None:
        out += self._held
        self._held.clear()
        self._line.clear()
        self._mode = _PASS

    def _line_end(self, out: bytearray, eol: bytes) -> int:
        """Handle a line end; return where its bytes went."""
        mode = self._mode
        if self._line_empty:  # a blank line ends the event
            if mode == _HOLD:
                self._held += eol
                self._pass(out)
                mode = _PASS
            else:
                self._put(out, mode, eol)
            self._mode = _HOLD
            self._held.clear()
            self._line.clear()
            return mode
        self._line_empty = True
        if mode != _HOLD:
            self._put(out, mode, eol)
            return mode
        self._held += eol
        line = bytes(self._line)
        self._line.clear()
        if line.startswith(b"data:"):
            if _usage_only(line):
                self.withheld += len(self._held)
                self._held.clear()
                self._mode = _DROP
            else:
                if b'"usage":null' in self._held:  # the event's first data line is held whole here
                    before = len(self._held)
                    self._held[:] = _NULL_USAGE.sub(b"", bytes(self._held))
                    self.withheld += before - len(self._held)
                self._pass(out)
        return self._mode


# -- the ASGI application ----------------------------------------------------------------------------------------


class _UpstreamBroke(DropConnection):
    """Raised after the response head to make the server drop the client's connection, as the upstream did."""


class _Request(NamedTuple):
    """What goes upstream: method, the URL exactly as encoded, the forwarded headers, the body."""

    method: str
    url: URL
    headers: list[tuple[str, str]]
    body: bytes


class _Watch:
    """Shared by a request and its disconnect watcher."""

    __slots__ = ("finished", "gone")

    def __init__(self) -> None:
        self.finished = False
        self.gone = False


def _json_error(kind: str, message: str) -> bytes:
    return json.dumps({"error": {"type": kind, "code": kind, "message": message}}).encode("utf-8")


async def _reply(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header_text(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


class ProxyApp:
    """The proxy as a plain ASGI application (HTTP and lifespan scopes).

    ``timeout`` bounds the upstream (connect, each read); ``upstream`` holds the upstream connections and is
    closed at lifespan shutdown.
    """

    def __init__(
        self,
        routes: RouteTable,
        sink: Sink,
        *,
        vantage: str,
        stats: RecorderStats | None = None,
        catalog: PriceCatalog | None = None,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        upstream: UpstreamClient | None = None,
        token: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
        access_log: bool = False,
    ) -> None:
        self.token = token.encode("utf-8") if token else None
        self.max_body = max_body
        self.client_timeout = client_timeout
        self.access_log = access_log
        self.routes = routes
        self.sink = sink
        self.vantage = vantage
        self.stats = stats if stats is not None else RecorderStats()
        self.catalog = catalog
        self.timeout = timeout
        self.upstream = upstream if upstream is not None else UpstreamClient()
        install_quiet_drop_filter()

    def _too_large(self) -> str:
        return f"GLM Monitor proxy: the request body is larger than [proxy] max_body ({self.max_body} bytes)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.upstream.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.access_log:
            send = _AccessLog(scope, send)
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        if self.token is not None and not _has_token(scope["headers"], self.token):
            await _reply(send, 401, _json_error("unauthorized", _UNAUTHORIZED))
            return
        found = self.routes.match(raw_path)
        if found is None:
            await _reply(send, 404, self.routes.not_found_body(raw_path))
            return
        route, rest = found
        clean = normalise_path(rest)
        if clean is None:
            await _reply(send, 400, _json_error("bad_path", _BAD_PATH))
            return
        rest = clean
        if isinstance(send, _AccessLog):
            send.route = route.name
        declared = _declared_length(scope["headers"])
        if declared is not None and declared > self.max_body:
            await _reply(send, 413, _json_error("request_too_large", self._too_large()))
            return
        try:
            async with asyncio.timeout(self.client_timeout):
                body = await _read_body(receive, self.max_body)
        except TimeoutError:
            await _reply(send, 408, _json_error("request_timeout", _TOO_SLOW))
            return
        if body is None:
            return  # the client left before its request was complete
        if body is _TOO_LARGE:
            await _reply(send, 413, _json_error("request_too_large", self._too_large()))
            return
        assert isinstance(body, bytes)
        method: str = scope["method"]
        headers, app, had_length = _request_headers(scope["headers"])
        exchange: Exchange | None = None
        usage_filter: UsageChunkFilter | None = None
        if method == "POST":
            # A large body is parsed on a worker thread: other streams' chunks keep flowing meanwhile.
            big = len(body) > _PARSE_OFF_LOOP_BYTES
            info = (
                await asyncio.to_thread(_request_info, route, body, headers)
                if big
                else _request_info(route, body, headers)
            )
            if route.endpoint.dialect == "openai" and info.stream and not info.include_usage:
                changed = await asyncio.to_thread(ask_for_usage, body) if big else ask_for_usage(body)
                if changed is not None:
                    body, usage_filter = changed, UsageChunkFilter()
                    headers = [h for h in headers if h[0] != b"accept-encoding"]
                    headers.append((b"accept-encoding", b"identity"))
            exchange = Exchange(
                provider=route.provider,
                endpoint=route.endpoint,
                request=info,
                secrets=credentials(headers, scope.get("query_string", b"")),
                kind=request_kind(rest.decode("latin-1")),
                source="proxy",
                vantage=self.vantage,
                app=app,
                sink=self.sink,
                stats=self.stats,
                catalog=self.catalog,
            )
        if body or had_length:
            headers.append((b"content-length", str(len(body)).encode("ascii")))
        query: bytes = scope.get("query_string", b"")
        target = route.target(rest, query).decode("latin-1")
        pairs = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]
        request = _Request(method, URL(route.origin_url + target, encoded=True), pairs, body)
        await self._forward(route, request, exchange, usage_filter, receive, send)

    async def _forward(
        self,
        route: Route,
        request: _Request,
        exchange: Exchange | None,
        usage_filter: UsageChunkFilter | None,
        receive: Receive,
        send: Send,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch()
        watcher = asyncio.create_task(_watch_disconnect(receive, task, watch))
        response: aiohttp.ClientResponse | None = None
        done = False
        try:
            try:
                response = await self.upstream.session().request(
                    request.method,
                    request.url,
                    headers=request.headers,
                    data=request.body or None,
                    allow_redirects=False,
                    timeout=self.timeout,
                    proxy=self.upstream.proxy_for(request.url),
                )
            except _UPSTREAM_ERRORS as exc:
                watch.finished = True
                if exchange is not None:
                    exchange.finish(error=exc)
                await self._upstream_failed(route, exc, send, exchange.secrets if exchange is not None else ())
                return
            await self._relay(response, exchange, usage_filter, watch, send)
            done = True
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            task.uncancel()
            if exchange is not None:
                exchange.finish(disconnected=True)
        finally:
            watch.finished = True
            watcher.cancel()
            if response is not None:
                # A response read to its end gives its connection back; any other is closed with it.
                if done:
                    response.release()
                else:
                    response.close()

    async def _relay(
        self,
        response: aiohttp.ClientResponse,
        exchange: Exchange | None,
        usage_filter: UsageChunkFilter | None,
        watch: _Watch,
        send: Send,
    ) -> None:
        status = response.status
        raw = list(response.raw_headers)
        encoding = response.headers.get("content-encoding", "").strip().lower()
        sse = response.headers.get("content-type", "").lower().startswith("text/event-stream")
        if usage_filter is not None and not (200 <= status < 300 and sse):
            usage_filter = None  # an error: nothing was added to remove
        decode: Callable[[bytes], bytes] | None = None
        readable = False
        if exchange is not None or usage_filter is not None:
            readable, decode = body_decoder(encoding.encode("latin-1"))
        # An upstream that compressed the stream although asked for identity: the usage chunk we asked for must
        # still never reach a client that did not ask for it (code doing chunk.choices[0] would crash), so the
        # client gets the stream decoded (identity is an encoding every client accepts).
        decoded_for_client = usage_filter is not None and decode is not None
        if usage_filter is not None and decode is not None and not readable:
            usage_filter = None  # an encoding this install cannot decode: relayed as it is (logged below)
            decoded_for_client = False
            log.warning(
                "upstream answered in %s, which cannot be decoded here: an added usage chunk may pass", encoding
            )
        if exchange is not None:
            exchange.response_started(status, _header_text(raw))
        head = response_headers(raw, keep_length=usage_filter is None)
        if decoded_for_client:
            head = [(name, value) for name, value in head if name != b"content-encoding"]
        # A client that was told the body's length sees the response complete with its last byte, before the
        # end of the body is signalled: the exchange is recorded before that byte goes out.
        left = response.content_length if usage_filter is None and exchange is not None else None
        if left == 0 and exchange is not None:
            exchange.finish()
        await send({"type": "http.response.start", "status": status, "headers": head})
        try:
            async for chunk in response.content.iter_any():
                plain: bytes | None = chunk if decode is None else None
                if decode is not None and (readable or decoded_for_client):
                    try:
                        plain = decode(chunk)
                    except Exception as exc:  # a body that will not decode: relay it, stop reading it
                        self.stats.failed("decode", exc)
                        readable = False
                        if decoded_for_client:
                            raise _UpstreamBroke("undecodable body") from None
                if usage_filter is not None:
                    data = usage_filter.feed(plain if decoded_for_client and plain is not None else chunk)
                else:
                    data = chunk
                if exchange is not None and readable and plain is not None:
                    exchange.feed(plain)
                if left is not None:
                    left -= len(chunk)
                    if left <= 0 and exchange is not None:
                        exchange.finish()
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
        except _UPSTREAM_ERRORS as exc:
            if exchange is not None:
                exchange.finish(error=exc)
            held = usage_filter.finish() if usage_filter is not None else b""
            if held:  # the part of an event the upstream did send is the client's
                await send({"type": "http.response.body", "body": held, "more_body": True})
            raise _UpstreamBroke(type(exc).__name__) from None
        tail = usage_filter.finish() if usage_filter is not None else b""
        watch.finished = True
        if exchange is not None:
            # Recorded (in the journal) before the client can see the response end: a proxy killed right after
            # still has every request its clients saw complete.
            exchange.finish()
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _upstream_failed(
        self, route: Route, exc: BaseException, send: Send, secrets: tuple[str, ...] = ()
    ) -> None:
        where = f"{route.scheme}://{route.host}:{route.port}"
        detail = mask_values(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, secrets)
        if isinstance(exc, TimeoutError):
            message = f"GLM Monitor proxy: the upstream {where} did not answer in time ({detail})"
            await _reply(send, 504, _json_error("upstream_timeout", message))
        elif isinstance(exc, aiohttp.ClientConnectorError):
            message = f"GLM Monitor proxy: the upstream {where} could not be reached ({detail})"
            await _reply(send, 502, _json_error("upstream_unreachable", message))
        else:
            message = f"GLM Monitor proxy: the connection to the upstream {where} failed before it answered ({detail})"
            await _reply(send, 502, _json_error("upstream_failed", message))


_TOO_LARGE = object()


async def _read_body(receive: Receive, limit: int) -> bytes | object | None:
    """The whole request body; None if the client left first, ``_TOO_LARGE`` once it passes ``limit`` bytes
    (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return _TOO_LARGE
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _declared_length(raw: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in raw:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _has_token(raw: list[tuple[bytes, bytes]], token: bytes) -> bool:
    for name, value in raw:
        if name == TOKEN_HEADER:
            return hmac.compare_digest(value.strip(), token)
    return False


class _AccessLog:
    """Wraps ``send`` to log one line per request when it ends: method, route, status, duration, app; never
    headers, query strings or bodies."""

    __slots__ = ("app", "method", "route", "send", "start", "status")

    def __init__(self, scope: Scope, send: Send) -> None:
        self.send = send
        self.method: str = scope.get("method", "?")
        self.route = "-"
        self.status = 0
        self.start = time.perf_counter()
        self.app = "-"
        for name, value in scope.get("headers", ()):
            if name == APP_HEADER:
                self.app = value.decode("utf-8", "replace").strip()[:_APP_MAX] or "-"

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            ms = (time.perf_counter() - self.start) * 1000.0
            access.info("%s /%s %d %.1fms app=%s", self.method, self.route, self.status, ms, self.app)


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any], watch: _Watch) -> None:
    """Cancel ``task`` when the client disconnects before its response is finished."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not watch.finished:
                watch.gone = True
                task.cancel()
            return


TOKEN_HEADER = b"x-monitor-token"
"""Where a client sends the proxy's own token (required when it listens beyond loopback); never forwarded."""


def _not_forwarded(name: bytes) -> bool:
    """Headers a client may not pass upstream through us: our token, and forwarding headers a client could forge
    (the proxy adds none of its own either: the providers need not learn the client's address)."""
    return name == TOKEN_HEADER or name == b"forwarded" or name == b"x-real-ip" or name.startswith(b"x-forwarded-")


def _request_headers(raw: list[tuple[bytes, bytes]]) -> tuple[Headers, str | None, bool]:
    """(headers to forward, the X-Monitor-App value, whether the request had a body length or framing)."""
    extra = frozenset(
        t.strip().lower() for name, value in raw if name == b"connection" for t in value.split(b",") if t.strip()
    )
    out: Headers = []
    app: str | None = None
    had_length = False
    for name, value in raw:
        if name == APP_HEADER:
            app = value.decode("utf-8", "replace").strip()[:_APP_MAX] or None
        elif name == b"content-length" or name == b"transfer-encoding":
            had_length = True
        elif name != b"host" and not is_hop_by_hop(name, extra) and not _not_forwarded(name):
            out.append((name, value))
    return out, app, had_length


def _request_info(route: Route, body: bytes, headers: Headers) -> RequestInfo:
    info = parse_request(body)
    if info.model is not None and len(info.model) > _MODEL_MAX:
        info = replace(info, model=info.model[:_MODEL_MAX])
    if route.endpoint.dialect == "dashscope" and not info.stream:
        # DashScope native streams are asked for with a header, not in the body.
        for name, value in headers:
            lowered = value.lower()
            if (name == b"x-dashscope-sse" and lowered.strip() == b"enable") or (
                name == b"accept" and b"text/event-stream" in lowered
            ):
                return replace(info, stream=True)
    return info


# -- building and serving ------------------------------------------------------------------------------------------


def build_app(
    settings: Settings,
    sink: Sink,
    *,
    stats: RecorderStats | None = None,
    timeout: aiohttp.ClientTimeout | float | None = None,
    catalog: PriceCatalog | None = None,
    providers: Mapping[str, Provider] | None = None,
    token: str | None = None,
) -> ProxyApp:
    """The proxy for ``settings``, recording into ``sink``: routes for ``providers`` (default
    ``settings.catalog()``), prices with the config's overrides (or ``catalog``), upstream ``timeout`` (a
    number sets every phase; default ``DEFAULT_TIMEOUT``)."""
    if timeout is None:
        upstream_timeout = DEFAULT_TIMEOUT
    elif isinstance(timeout, aiohttp.ClientTimeout):
        upstream_timeout = timeout
    else:
        upstream_timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
    return ProxyApp(
        RouteTable.from_catalog(providers if providers is not None else settings.catalog()),
        sink,
        vantage=settings.vantage,
        stats=stats,
        catalog=catalog if catalog is not None else settings.price_catalog(),
        timeout=upstream_timeout,
        token=token,
        max_body=settings.proxy.max_body,
        client_timeout=settings.proxy.client_timeout,
        access_log=settings.proxy.access_log,
    )


def proxy_token(settings: Settings, host: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The token clients must send (``$[proxy] token_env``); ConfigError when ``host`` is beyond loopback and no
    token is set. With a token set, it is required on loopback too."""
    return required_token(
        "the recording proxy",
        host,
        settings.proxy.token_env,
        how="clients send it in the X-Monitor-Token header",
        environ=environ,
    )


def _uvicorn_config(app: ProxyApp, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan="on",
        access_log=False,  # request lines could carry query strings; the events are the record
        server_header=False,  # the upstream's own Server and Date headers pass through
        date_header=False,
        log_config=None,  # leave the host process's logging alone
        timeout_graceful_shutdown=5,
        **kwargs,
    )


def serve(settings: Settings, sink: Sink, host: str | None = None, port: int | None = None) -> None:
    """Serve the proxy in the foreground until interrupted (``glm-monitor proxy``); host and port default to
    ``settings.proxy`` (127.0.0.1:8787). Uses httptools and uvloop when they are installed."""
    bind_host = host if host is not None else settings.proxy.host
    bind_port = port if port is not None else settings.proxy.port
    app = build_app(settings, sink, token=proxy_token(settings, bind_host))
    log.info("proxy routes: %s", ", ".join(f"/{name.decode()}" for name in app.routes.routes))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again so the process would die by
    # it before the caller flushes what was recorded: noted instead, so the caller returns and exits 0.
    with stop_on_signals():
        uvicorn.Server(_uvicorn_config(app, host=bind_host, port=bind_port, log_level="info")).run()


class ProxyServer:
    """A proxy app served by uvicorn in a daemon thread, for tests and benchmarks (``port=0``: ephemeral,
    known once started). ``start()`` returns when it accepts connections; ``stop()`` when it is gone."""

    def __init__(self, app: ProxyApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` without a trailing slash; append a route (``/zai``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ProxyServer:
        """Bind, serve in a background thread and wait until ready."""
        family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        self.port = sock.getsockname()[1]
        server = uvicorn.Server(_uvicorn_config(self.app, log_level="warning", loop="asyncio"))
        self._server = server

        def run() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            finally:
                sock.close()

        self._thread = threading.Thread(target=run, name=f"glm-proxy-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the proxy on {self.url} did not start")
            time.sleep(0.002)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (requests in progress get uvicorn's grace period). Idempotent."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> ProxyServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def run_in_thread(app: ProxyApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[ProxyServer]:
    """A started :class:`ProxyServer` for the duration of the ``with`` block."""
    server = ProxyServer(app, host, port)
    server.start()
    try:
        yield server
    finally:
        server.stop()
