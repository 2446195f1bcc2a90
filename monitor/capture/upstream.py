"""The proxy's upstream side: connections to the providers, header rules, and decoding for the recorder.

Connections: aiohttp, not httpx. Measured on the 2-core reference machine (bench/proxy_overhead.py, a bare
pass-through of each beside ours), a bare starlette + httpx relay added 2.4–2.6 ms to the first byte at 1 and 10
streams and spent 18 / 9.7 / 5.7 ms of CPU per stream at 1 / 10 / 100 streams even with single-connection clients
(httpx's shared pool costs seconds at 100 streams, see DESIGN.md); the same relay on aiohttp (C HTTP parser, one
pool with no per-request scan) added 0.8–1.0 ms and spent about half the CPU. ``UpstreamClient`` holds one aiohttp
session per event loop; every connection shares one SSL context (one CA bundle in memory).

Headers (RFC 9110 section 7.6.1): hop-by-hop headers (``connection`` and the headers it names, ``keep-alive``,
``transfer-encoding``, ``te``, ``trailer``, ``upgrade``, ``proxy-*``; and ``expect``, as the proxy already holds
the whole request body) are not forwarded either way; ``host`` is set to the upstream's; everything else,
``authorization`` and ``x-api-key`` included, passes unchanged.
"""

from __future__ import annotations

import asyncio
import importlib
import ssl
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp
import certifi
from yarl import URL

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-connection",
        # The proxy has the whole body before it calls the upstream: there is nothing left to wait for.
        b"expect",
    }
)
APP_HEADER = b"x-monitor-app"

Headers = list[tuple[bytes, bytes]]


def shared_ssl_context() -> ssl.SSLContext:
    """A verifying client SSL context with certifi's CA bundle, made once per process."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context(cafile=certifi.where())
    return _SSL_CONTEXT


_SSL_CONTEXT: ssl.SSLContext | None = None


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in ``Connection`` (they are hop-by-hop for this connection only)."""
    names: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            names.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(names)


def is_hop_by_hop(name: bytes, extra: frozenset[bytes] = frozenset()) -> bool:
    """Whether a (lower-case) header name is hop-by-hop; ``extra``: the names the Connection header lists."""
    return name in HOP_BY_HOP or name.startswith(b"proxy-") or name in extra


def response_headers(raw: Iterable[tuple[bytes, bytes]], *, keep_length: bool) -> Headers:
    """The upstream response's headers as the client gets them: hop-by-hop ones dropped, names lower-case.

    ``keep_length`` False drops ``content-length`` too (the body is about to change length).
    """
    raw = list(raw)
    extra = _connection_tokens(raw)
    out: Headers = []
    for name, value in raw:
        name = name.lower()
        if is_hop_by_hop(name, extra) or (not keep_length and name == b"content-length"):
            continue
        out.append((name, value))
    return out


class UpstreamClient:
    """The proxy's connections to its upstreams: one aiohttp session (and connection pool) per event loop.

    The session is made on first use inside the serving loop and closed by ``aclose`` (the proxy's lifespan
    shutdown). It never decompresses (the client gets the bytes as sent), keeps no cookies (one client's cookies
    must not reach another), adds no ``User-Agent``, ``Accept`` or ``Accept-Encoding`` of its own and follows no
    redirects: each request goes out as the client made it.

    Outgoing proxies: ``proxies`` maps a scheme to a proxy URL, with ``no`` the hosts to reach directly, as
    ``urllib.request.getproxies()`` gives them; by default that is the environment's ``HTTPS_PROXY`` /
    ``HTTP_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY`` at start (what the SDKs and the prober's httpx honour too).
    ``proxy_for`` decides once per upstream origin.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        # Under the 5 s idle timeout of uvicorn-based upstreams (vLLM, SGLang) and of the SDKs' own httpx
        # clients, so a connection is never reused just as the upstream closes it.
        keepalive_expiry: float = 4.0,
        proxies: Mapping[str, str] | None = None,
    ) -> None:
        self.ssl_context = ssl_context or shared_ssl_context()
        self.keepalive_expiry = keepalive_expiry
        self.proxies = dict(urllib.request.getproxies() if proxies is None else proxies)
        self._proxy_of: dict[tuple[str, str, int | None], str | None] = {}
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def proxy_for(self, url: URL) -> str | None:
        """The proxy to reach ``url`` through (its scheme's, else ``all``), or None: none set, or the host is
        listed in ``no`` (``NO_PROXY``: names, domain suffixes, ``*``)."""
        origin = (url.scheme, (url.host or "").lower(), url.port)
        if origin not in self._proxy_of:
            proxy = self.proxies.get(url.scheme) or self.proxies.get("all")
            if proxy and _bypassed(origin[1], url.port, self.proxies.get("no", "")):
                proxy = None
            self._proxy_of[origin] = proxy or None
        return self._proxy_of[origin]

    def session(self) -> aiohttp.ClientSession:
        """The session of the running loop (made on first use; a new one if the loop changed)."""
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(
                ssl=self.ssl_context,
                limit=0,  # no cap: every concurrent stream gets its own connection at once
                limit_per_host=0,
                keepalive_timeout=self.keepalive_expiry,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=SKIP_AUTO_HEADERS,
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None),
            )
            self._session, self._loop = session, loop
        return session

    async def aclose(self) -> None:
        """Close the session and its connections (a later request opens a new one)."""
        session, self._session, self._loop = self._session, None, None
        if session is not None and not session.closed:
            await session.close()


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (comma-separated; ``*`` for every host) lists ``host``: the name itself, a domain it is
    under (``example.com`` and ``.example.com`` both cover ``api.example.com``), or either with ``:port``."""
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, wanted_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if wanted_port and wanted_port != str(port):
            continue
        name = name.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
"""Headers aiohttp would otherwise add on its own; a client's own values still pass."""


# -- decoding for the recorder ------------------------------------------------------------------------------

Decoder = Callable[[bytes], bytes]


def _zlib_decoder(wbits: int) -> Decoder:
    d = zlib.decompressobj(wbits)
    return d.decompress


def _deflate_decoder() -> Decoder:
    # "deflate" is zlib-wrapped by the RFC but raw deflate from some servers: decide on the first bytes.
    state: dict[str, Any] = {}

    def decode(data: bytes) -> bytes:
        d = state.get("d")
        if d is None:
            d = zlib.decompressobj()
            try:
                out: bytes = d.decompress(data)
            except zlib.error:
                d = zlib.decompressobj(-zlib.MAX_WBITS)
                out = d.decompress(data)
            state["d"] = d
            return out
        result: bytes = d.decompress(data)
        return result

    return decode


def _optional_decoder(coding: bytes) -> Decoder | None:
    """A brotli or zstd decoder when the optional package is installed, else None."""
    try:
        if coding == b"br":
            brotli: Any = importlib.import_module("brotli")
            process: Decoder = brotli.Decompressor().process
            return process
        zstandard: Any = importlib.import_module("zstandard")
        decompress: Decoder = zstandard.ZstdDecompressor().decompressobj().decompress
        return decompress
    except ImportError:
        return None


def body_decoder(content_encoding: bytes | None) -> tuple[bool, Decoder | None]:
    """How to turn the response body into plain bytes for the recorder: (readable, decoder).

    The decoder (None: the body is plain already) takes each chunk in order. ``readable`` is False for an
    encoding this install cannot decode (brotli or zstandard not installed, or unknown): the body is then
    relayed but not read.
    """
    if not content_encoding:
        return True, None
    codings = [c.strip().lower() for c in content_encoding.split(b",") if c.strip()]
    steps: list[Decoder] = []
    for coding in reversed(codings):  # the last applied is undone first
        if coding == b"identity":
            continue
        if coding in (b"gzip", b"x-gzip"):
            steps.append(_zlib_decoder(zlib.MAX_WBITS | 16))
        elif coding == b"deflate":
            steps.append(_deflate_decoder())
        elif coding in (b"br", b"zstd"):
            step = _optional_decoder(coding)
            if step is None:
                return False, None
            steps.append(step)
        else:
            return False, None
    if len(steps) <= 1:
        return True, steps[0] if steps else None

    def chain(data: bytes) -> bytes:
        for step in steps:
            data = step(data)
        return data

    return True, chain
