"""Recording httpx transports: every request an SDK sends to a known GLM provider becomes one ``UsageEvent``.

The obvious way, with the SDK's own ``http_client`` parameter::

    from openai import OpenAI
    from monitor.capture import httpx2_client

    client = OpenAI(base_url="https://api.z.ai/api/paas/v4", api_key=key, http_client=httpx2_client(app="crm-bot"))

Which factory: openai >= 3 and anthropic >= 2 are built on ``httpx2`` (their ``http_client`` is typed
``httpx2.Client`` / ``httpx2.AsyncClient``; anthropic 2 refuses httpx clients): use :func:`httpx2_client` /
:func:`async_httpx2_client`. Older SDKs and plain httpx code use :func:`httpx_client` / :func:`async_httpx_client`.
``httpx2`` is imported only when an httpx2 factory is called. Each factory takes the client's usual keyword
arguments (``timeout``, ``verify``, ``http2``, ``limits``, ``proxy``, ...; defaults as the SDKs' own clients:
redirects followed, 1000 connections, 100 kept alive) and wraps every transport the client builds, proxies
from the environment included. :class:`RecordingTransport` / :class:`AsyncRecordingTransport` (httpx) and
:func:`httpx2_transport` / :func:`async_httpx2_transport` wrap a transport of your own.

What is recorded: each POST whose URL lies under a provider endpoint's base URL (built-in providers with the
config's overrides, and ``[custom.*]`` servers; ``match_url``). Everything else (other hosts, GET model lists)
passes through untouched and unrecorded. ``app`` names who made the requests (None: no app); a request header
``X-Monitor-App`` overrides it for that request and is not forwarded to the provider. With SDK retries on, each
attempt is its own request and its own event.

Transparency: the application gets the same bytes at the same moments. The request body is read only when it is
already in memory (a streaming upload is never consumed); each response chunk is fed to the recorder (decoded
for it alone when the response is gzip/deflate/br/zstd encoded, with httpx's own decoders) and passed on at
once. The event is finished when the body ends, when the application closes the response (an SDK stream closes
right after ``[DONE]``; a stream closed before its end is marked incomplete), or when the transport raises (a
timeout or network error is recorded, then the original exception is re-raised unchanged). A failure of the
recording itself never fails or delays the request: it is logged once and counted in ``Recorder.stats``.

Where events go: by default to a process-wide writer made on first use from the GLM Monitor config
(``load_settings()``: database URL, vantage, ``[[prices]]`` overrides, custom providers); it migrates the
database, writes in a background thread (a forked worker gets a thread of its own) and is flushed at interpreter
exit. If the database is unreachable, events go to the spool and are written (after migrating it) once it is back;
if the config or the database cannot be used otherwise, the error is logged and traffic passes through unrecorded.
Tests and advanced callers inject ``sink=`` (anything with ``submit(event)``), ``settings=``, ``vantage=``,
``providers=`` (the provider catalog) and ``catalog=`` (the ``PriceCatalog``), or build one :class:`Recorder`
and pass it as ``recorder=`` (its ``stats`` and ``flush()`` are then at hand).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx

from monitor.capture.recorder import Exchange, RecorderStats, Sink
from monitor.pricing import PriceCatalog
from monitor.providers import Endpoint, Provider, match_url
from monitor.redact import credentials, redact
from monitor.request_kind import request_kind

if TYPE_CHECKING:
    import httpx2

    from monitor.config import DatabaseSettings, Settings
    from monitor.events import Event
    from monitor.writer import EventWriter

__all__ = [
    "APP_HEADER",
    "AsyncRecordingTransport",
    "Recorder",
    "RecordingTransport",
    "async_httpx2_client",
    "async_httpx2_transport",
    "async_httpx_client",
    "httpx2_client",
    "httpx2_transport",
    "httpx_client",
]

log = logging.getLogger(__name__)

APP_HEADER = "x-monitor-app"
"""Request header naming the app of one request; it overrides the transport's ``app`` and is not forwarded."""

# The SDKs' own client defaults (openai/anthropic DEFAULT_CONNECTION_LIMITS, follow_redirects=True).
_SDK_LIMITS = {"max_connections": 1000, "max_keepalive_connections": 100}
_MATCH_CACHE_SIZE = 1024


# --- decoding for the recorder only ------------------------------------------------------------------------


class _Decoder(Protocol):
    # httpx's decoders return bytes; httpx2's yield pieces of bounded size.
    def decode(self, data: bytes) -> bytes | Iterable[bytes]: ...

    def flush(self) -> bytes | Iterable[bytes]: ...


class _ZlibDecoder:
    """gzip / deflate for when httpx's decoders cannot be imported (deflate: zlib-wrapped or raw)."""

    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._obj = zlib.decompressobj(wbits)
        self._first = True

    def decode(self, data: bytes) -> bytes:
        if self._first and data and self._wbits == zlib.MAX_WBITS:
            self._first = False
            try:
                return self._obj.decompress(data)
            except zlib.error:
                self._obj = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as some servers send
        self._first = False
        return self._obj.decompress(data)

    def flush(self) -> bytes:
        return self._obj.flush()


class _Discard:
    """What the recorder reads once a body turned out undecodable: nothing (the event ends up incomplete)."""

    def decode(self, data: bytes) -> bytes:
        return b""

    def flush(self) -> bytes:
        return b""


_FALLBACK_DECODERS: dict[str, Callable[[], _Decoder]] = {
    "gzip": lambda: _ZlibDecoder(zlib.MAX_WBITS | 16),
    "deflate": lambda: _ZlibDecoder(zlib.MAX_WBITS),
}


def _decoder_table(module: str) -> tuple[Mapping[str, Callable[[], _Decoder]], Callable[[list[_Decoder]], _Decoder]]:
    """The content decoders of httpx or httpx2 (the same ones the client uses), or gzip/deflate of our own."""
    try:
        mod = __import__(f"{module}._decoders", fromlist=["SUPPORTED_DECODERS", "MultiDecoder"])
        table: Mapping[str, Callable[[], _Decoder]] = dict(mod.SUPPORTED_DECODERS)
        multi: Callable[[list[_Decoder]], _Decoder] = lambda children: mod.MultiDecoder(children=children)  # noqa: E731
        return table, multi
    except (ImportError, AttributeError):
        return _FALLBACK_DECODERS, lambda children: _Chain(children)


class _Chain:
    """Several content codings, applied in the order they are listed (so undone last-first)."""

    def __init__(self, children: list[_Decoder]) -> None:
        self._children = list(reversed(children))

    def decode(self, data: bytes) -> bytes:
        for child in self._children:
            data = _joined(child.decode(data))
        return data

    def flush(self) -> bytes:
        data = b""
        for child in self._children:
            data = _joined(child.decode(data)) + _joined(child.flush())
        return data


def _joined(out: bytes | Iterable[bytes]) -> bytes:
    return out if isinstance(out, bytes) else b"".join(out)


# --- one response being watched -----------------------------------------------------------------------------


class _Tap:
    """Feeds an ``Exchange`` the response bytes as the application reads them, and finishes it exactly once.

    The tap streams call ``take`` with each raw chunk, after adding its size to ``seen``: it is the exchange's own
    ``feed`` when the body is not content-encoded (one call per chunk on the request path), else a method that
    decodes the chunk for the exchange first.
    """

    __slots__ = ("decoder", "exchange", "headers", "read_to_end", "seen", "take")

    def __init__(self, exchange: Exchange, decoder: _Decoder | None, headers: Mapping[str, str]) -> None:
        self.exchange = exchange
        self.decoder = decoder
        self.headers = headers
        self.seen = 0
        self.read_to_end = False
        self.take: Callable[[bytes], None] = exchange.feed if decoder is None else self._decode

    def _decode(self, chunk: bytes) -> None:
        decoder = self.decoder
        if decoder is not None:
            self._feed_decoded(decoder.decode, chunk)

    def _feed_decoded(self, step: Callable[..., bytes | Iterable[bytes]], *args: bytes) -> None:
        try:
            out = step(*args)
            if isinstance(out, bytes):
                self.exchange.feed(out)
            else:
                for piece in out:
                    self.exchange.feed(piece)
        except Exception:
            # A corrupt body is the provider's fault, not a recording failure (the application gets its own
            # DecodingError): stop reading it; the event ends up incomplete.
            self.decoder = _Discard()

    def end(self) -> None:
        """The body was read to its end."""
        self.read_to_end = True
        if self.decoder is not None:
            self._feed_decoded(self.decoder.flush)
        self.exchange.finish()

    def failed(self, exc: BaseException) -> None:
        """Reading the body raised ``exc`` (timeout, connection lost)."""
        self.exchange.finish(error=exc)

    def closed(self) -> None:
        """The application closed the response. SDKs close a stream right after its end marker without reading
        the (empty) rest, so only a body known to be short (Content-Length) counts as cut off here; otherwise
        the usage parser's own view (end marker seen or not) says whether the answer was complete."""
        short = False
        if not self.read_to_end:
            # Content-Length is looked up only here: a body read to its end never needs it.
            try:
                length = self.headers.get("content-length")
                short = length is not None and length.isdigit() and self.seen < int(length)
            except Exception as exc:  # closing must never fail because of us
                self.exchange.stats.failed("closed", exc)
        self.exchange.finish(disconnected=short)


class _SyncBody(Protocol):
    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class _AsyncBody(Protocol):
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class _SyncTapStream:
    """A response stream passing each chunk of ``inner`` on unchanged, right after showing it to the tap."""

    def __init__(self, inner: _SyncBody, tap: _Tap) -> None:
        self._inner = inner
        self._tap = tap

    def __iter__(self) -> Iterator[bytes]:
        tap = self._tap
        take = tap.take
        try:
            for chunk in self._inner:
                tap.seen += len(chunk)
                take(chunk)
                yield chunk
        except GeneratorExit:
            raise  # the application stopped reading; its close() finishes the event
        except Exception as exc:
            tap.failed(exc)
            raise
        tap.end()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._tap.closed()


class _AsyncTapStream:
    """The async twin of :class:`_SyncTapStream`."""

    def __init__(self, inner: _AsyncBody, tap: _Tap) -> None:
        self._inner = inner
        self._tap = tap

    async def __aiter__(self) -> AsyncIterator[bytes]:
        tap = self._tap
        take = tap.take
        try:
            async for chunk in self._inner:
                tap.seen += len(chunk)
                take(chunk)
                yield chunk
        except GeneratorExit:
            raise
        except Exception as exc:
            tap.failed(exc)
            raise
        tap.end()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._tap.closed()


@dataclass(frozen=True)
class _Flavour:
    """What differs between httpx and httpx2: the stream base classes (checked by ``Response.iter_raw``) and
    the content decoders."""

    name: str
    sync_stream: Callable[[Any, _Tap], Any]
    async_stream: Callable[[Any, _Tap], Any]
    decoders: Mapping[str, Callable[[], _Decoder]]
    multi: Callable[[list[_Decoder]], _Decoder]


class _HttpxSyncStream(_SyncTapStream, httpx.SyncByteStream):
    pass


class _HttpxAsyncStream(_AsyncTapStream, httpx.AsyncByteStream):
    pass


def _httpx_flavour() -> _Flavour:
    table, multi = _decoder_table("httpx")
    return _Flavour("httpx", _HttpxSyncStream, _HttpxAsyncStream, table, multi)


_HTTPX = _httpx_flavour()


# --- what to record and where --------------------------------------------------------------------------------


class _ProviderIndex:
    """``match_url`` over the providers, remembered per (scheme, host, path); other hosts never reach it."""

    def __init__(self, providers: Iterable[Provider]) -> None:
        by_host: dict[tuple[str, str], list[Provider]] = {}
        for provider in providers:
            for ep in provider.endpoints:
                parts = urlsplit(ep.base_url)
                on_host = by_host.setdefault((parts.scheme.lower(), parts.netloc.lower()), [])
                if provider not in on_host:
                    on_host.append(provider)
        self._by_host = {key: tuple(value) for key, value in by_host.items()}
        self._cache: dict[tuple[str, bytes, bytes], tuple[Provider, Endpoint] | None] = {}

    def match(self, url: Any) -> tuple[Provider, Endpoint] | None:
        # One dict lookup per request: the answer for a (scheme, host, path) never changes.
        key: tuple[str, bytes, bytes] = (url.scheme, url.netloc, url.raw_path)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = None
        candidates = self._by_host.get((key[0], key[1].decode("ascii", "replace").lower()))
        if candidates is not None:
            found = match_url(str(url), candidates)
        if len(self._cache) >= _MATCH_CACHE_SIZE:
            self._cache.clear()  # paths with ids or queries in them must not grow it forever
        self._cache[key] = found
        return found


_writers_lock = threading.Lock()
_writers: dict[str, EventWriter] = {}
_databases: dict[str, DatabaseSettings] = {}


def _start_writer(engine: Any, db: DatabaseSettings, prepare: Callable[[], None] | None = None) -> EventWriter:
    from monitor.writer import writer_for

    # The same journal directory as the daemon and the proxy of this database (each process has its own file).
    writer = writer_for(engine, db, prepare)
    atexit.register(writer.close, 30.0)
    return writer


def _shared_writer(db: DatabaseSettings) -> EventWriter:
    """The process-wide writer for database ``db.url``: migrated (later, if the database is away: events wait
    in the journal meanwhile), started, closed (flushed) at exit."""
    from monitor.store import make_engine, upgrade_or_defer

    with _writers_lock:
        writer = _writers.get(db.url)
        if writer is None:
            prepare = upgrade_or_defer(db.url)
            writer = _writers[db.url] = _start_writer(make_engine(db.url), db, prepare)
            _databases[db.url] = db
        return writer


def _restart_writers_in_child() -> None:
    # A forked worker (gunicorn --preload, multiprocessing) inherits the writers but not their threads: give it
    # threads, connections and a journal file of its own, or its events would queue forever.
    global _writers_lock
    _writers_lock = threading.Lock()
    for url, old in list(_writers.items()):
        old.engine.dispose(close=False)
        if old.journal is not None:
            old.journal.forget()  # the parent's file stays the parent's
        # A migration still waiting for the database (it was away at start) is the child's to run too.
        _writers[url] = _start_writer(old.engine, _databases[url], old.pending_prepare)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_writers_in_child)


class _SharedSink:
    """The default sink: the shared writer of one database, looked up per event so that it survives a fork."""

    def __init__(self, db: DatabaseSettings) -> None:
        self.url = db.url
        _shared_writer(db)

    def submit(self, event: Event) -> None:
        _writers[self.url].submit(event)

    def flush(self, timeout: float | None = None) -> bool:
        return _writers[self.url].flush(timeout)


class Recorder:
    """What a recording transport records, and where: the app, the providers, the vantage, prices, the sink.

    Anything not given comes from ``settings`` (default: ``load_settings()``); no ``sink`` means the shared
    writer of the config's database. ``stats`` counts recorded events and recording failures (pass one to share
    it). If the config or the database is unusable, the error is logged, counted, and nothing is recorded.
    """

    def __init__(
        self,
        app: str | None = None,
        *,
        sink: Sink | None = None,
        settings: Settings | None = None,
        vantage: str | None = None,
        providers: Iterable[Provider] | Mapping[str, Provider] | None = None,
        catalog: PriceCatalog | None = None,
        stats: RecorderStats | None = None,
    ) -> None:
        self.app = app
        self.stats = stats if stats is not None else RecorderStats()
        self.sink: Sink | None = None
        self.vantage = vantage or "local"
        self.catalog = catalog
        self._index = _ProviderIndex(())
        try:
            if settings is None and (sink is None or vantage is None or providers is None or catalog is None):
                from monitor.config import load_settings

                settings = load_settings()
            if providers is None:
                providers = _settings(settings).catalog()
            if isinstance(providers, Mapping):
                providers = providers.values()
            self._index = _ProviderIndex(providers)
            if vantage is None and settings is not None:
                self.vantage = settings.vantage
            if catalog is None and settings is not None and settings.prices:
                self.catalog = settings.price_catalog()
            self.sink = sink if sink is not None else _SharedSink(_settings(settings).database)
        except Exception as exc:
            self.sink = None
            self.stats.failed("setup", exc)
            log.error("GLM Monitor records nothing through this client: %s", redact(str(exc)))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event recorded so far is stored, if the sink can tell (``EventWriter`` can);
        False if ``timeout`` passed first."""
        flush = getattr(self.sink, "flush", None)
        return bool(flush(timeout)) if callable(flush) else True

    def start(self, request: Any) -> Exchange | None:
        """An ``Exchange`` for ``request`` if it goes to a known provider (and strips ``X-Monitor-App``)."""
        sink = self.sink
        if sink is None or request.method != "POST":
            return None
        try:
            found = self._index.match(request.url)
            if found is None:
                return None
            provider, endpoint = found
            app = self.app
            headers = request.headers
            if _has_app_header(headers):
                app = headers[APP_HEADER] or app
                del headers[APP_HEADER]
            stream_asked = False
            if endpoint.dialect == "dashscope":
                # DashScope native streams are asked for with a header, not in the body.
                sse = headers.get("x-dashscope-sse", "").lower() == "enable"
                stream_asked = sse or "text/event-stream" in headers.get("accept", "")
            # The body is parsed when the event is built, at the end of the response (up to DEFER_BYTES it is kept).
            return Exchange(
                provider=provider,
                endpoint=endpoint,
                request_body=_body(request),
                stream_asked=stream_asked,
                secrets=credentials(headers.raw, request.url.query),
                kind=request_kind(request.url.path),
                source="transport",
                vantage=self.vantage,
                app=app,
                sink=sink,
                stats=self.stats,
                catalog=self.catalog,
            )
        except Exception as exc:
            self.stats.failed("start", exc)
            return None

    def watch(self, response: Any, exchange: Exchange, flavour: _Flavour, *, sync: bool) -> Any:
        """Put a tap on ``response``'s stream and return ``response``; the application reads through it."""
        try:
            headers = response.headers
            status = response.status_code
            if 300 <= status < 400 and "location" in headers:
                return response  # not an answer: the request it leads to is recorded (the exchange is dropped)
            exchange.response_started(status, headers)
            tap = _Tap(exchange, _decoder(headers.get("content-encoding"), flavour), headers)
            response.stream = (flavour.sync_stream if sync else flavour.async_stream)(response.stream, tap)
        except Exception as exc:
            self.stats.failed("watch", exc)
            exchange.finish()
        return response


def _settings(settings: Settings | None) -> Settings:
    if settings is None:  # pragma: no cover - settings are loaded whenever something is missing
        raise ValueError("no settings")
    return settings


_APP_HEADER_BYTES = APP_HEADER.encode("ascii")


def _has_app_header(headers: Any) -> bool:
    """Whether the request names its app (``X-Monitor-App``), looked for among the raw header names: ``in`` on
    httpx headers would first decode every header name and value to pick their encoding."""
    size = len(_APP_HEADER_BYTES)
    return _APP_HEADER_BYTES in [name.lower() for name, _ in headers.raw if len(name) == size]


def _body(request: Any) -> bytes | None:
    """The request body if it is already in memory; a streaming body is left alone."""
    try:
        content: bytes = request.content
    except Exception:  # RequestNotRead: a streaming upload
        return None
    return content


def _decoder(encoding: str | None, flavour: _Flavour) -> _Decoder | None:
    """A decoder for ``Content-Encoding`` as httpx picks it (unknown codings skipped); None: identity."""
    if not encoding:
        return None
    decoders: list[_Decoder] = []
    for value in encoding.split(","):
        make = flavour.decoders.get(value.strip().lower())
        if make is not None and value.strip().lower() != "identity":
            decoders.append(make())
    if not decoders:
        return None
    return decoders[0] if len(decoders) == 1 else flavour.multi(decoders)


def _handle(wrapped: Any, recorder: Recorder, request: Any, flavour: _Flavour) -> Any:
    exchange = recorder.start(request)
    if exchange is None:
        return wrapped.handle_request(request)
    try:
        response = wrapped.handle_request(request)
    except BaseException as exc:
        exchange.finish(error=exc)
        raise
    return recorder.watch(response, exchange, flavour, sync=True)


async def _ahandle(wrapped: Any, recorder: Recorder, request: Any, flavour: _Flavour) -> Any:
    exchange = recorder.start(request)
    if exchange is None:
        return await wrapped.handle_async_request(request)
    try:
        response = await wrapped.handle_async_request(request)
    except BaseException as exc:
        exchange.finish(error=exc)
        raise
    return recorder.watch(response, exchange, flavour, sync=False)


# --- httpx ---------------------------------------------------------------------------------------------------


class RecordingTransport(httpx.BaseTransport):
    """An httpx transport that records requests to known providers and passes everything to ``wrapped``
    (default: a plain ``httpx.HTTPTransport()``)."""

    def __init__(self, wrapped: httpx.BaseTransport | None = None, *, recorder: Recorder | None = None) -> None:
        self.wrapped = wrapped if wrapped is not None else httpx.HTTPTransport()
        self.recorder = recorder if recorder is not None else Recorder()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the wrapped transport, recording it if it goes to a known provider."""
        response: httpx.Response = _handle(self.wrapped, self.recorder, request, _HTTPX)
        return response

    def __enter__(self) -> RecordingTransport:
        self.wrapped.__enter__()
        return self

    def close(self) -> None:
        """Close the wrapped transport."""
        self.wrapped.close()


class AsyncRecordingTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`RecordingTransport` (default: a plain ``httpx.AsyncHTTPTransport()``)."""

    def __init__(self, wrapped: httpx.AsyncBaseTransport | None = None, *, recorder: Recorder | None = None) -> None:
        self.wrapped = wrapped if wrapped is not None else httpx.AsyncHTTPTransport()
        self.recorder = recorder if recorder is not None else Recorder()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the wrapped transport, recording it if it goes to a known provider."""
        response: httpx.Response = await _ahandle(self.wrapped, self.recorder, request, _HTTPX)
        return response

    async def __aenter__(self) -> AsyncRecordingTransport:
        await self.wrapped.__aenter__()
        return self

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self.wrapped.aclose()


# --- httpx2 (imported only when asked for) -------------------------------------------------------------------


@dataclass(frozen=True)
class _Httpx2Kinds:
    flavour: _Flavour
    sync_transport: Callable[[Any, Recorder], httpx2.BaseTransport]
    async_transport: Callable[[Any, Recorder], httpx2.AsyncBaseTransport]


@cache
def _httpx2() -> _Httpx2Kinds:
    import httpx2

    class _SyncStream2(_SyncTapStream, httpx2.SyncByteStream):
        pass

    class _AsyncStream2(_AsyncTapStream, httpx2.AsyncByteStream):
        pass

    table, multi = _decoder_table("httpx2")
    flavour = _Flavour("httpx2", _SyncStream2, _AsyncStream2, table, multi)

    class Httpx2RecordingTransport(httpx2.BaseTransport):
        """:class:`RecordingTransport` for httpx2."""

        def __init__(self, wrapped: httpx2.BaseTransport, recorder: Recorder) -> None:
            self.wrapped = wrapped
            self.recorder = recorder

        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            response: httpx2.Response = _handle(self.wrapped, self.recorder, request, flavour)
            return response

        def __enter__(self) -> Httpx2RecordingTransport:
            self.wrapped.__enter__()
            return self

        def close(self) -> None:
            self.wrapped.close()

    class AsyncHttpx2RecordingTransport(httpx2.AsyncBaseTransport):
        """:class:`AsyncRecordingTransport` for httpx2."""

        def __init__(self, wrapped: httpx2.AsyncBaseTransport, recorder: Recorder) -> None:
            self.wrapped = wrapped
            self.recorder = recorder

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            response: httpx2.Response = await _ahandle(self.wrapped, self.recorder, request, flavour)
            return response

        async def __aenter__(self) -> AsyncHttpx2RecordingTransport:
            await self.wrapped.__aenter__()
            return self

        async def aclose(self) -> None:
            await self.wrapped.aclose()

    return _Httpx2Kinds(flavour, Httpx2RecordingTransport, AsyncHttpx2RecordingTransport)


def httpx2_transport(
    wrapped: httpx2.BaseTransport | None = None, *, recorder: Recorder | None = None
) -> httpx2.BaseTransport:
    """:class:`RecordingTransport` for httpx2 around ``wrapped`` (default: ``httpx2.HTTPTransport()``)."""
    import httpx2

    kinds = _httpx2()
    return kinds.sync_transport(
        wrapped if wrapped is not None else httpx2.HTTPTransport(), recorder if recorder is not None else Recorder()
    )


def async_httpx2_transport(
    wrapped: httpx2.AsyncBaseTransport | None = None, *, recorder: Recorder | None = None
) -> httpx2.AsyncBaseTransport:
    """:class:`AsyncRecordingTransport` for httpx2 around ``wrapped`` (default: ``httpx2.AsyncHTTPTransport()``)."""
    import httpx2

    kinds = _httpx2()
    return kinds.async_transport(
        wrapped if wrapped is not None else httpx2.AsyncHTTPTransport(),
        recorder if recorder is not None else Recorder(),
    )


# --- clients -------------------------------------------------------------------------------------------------


def _client_defaults(kwargs: dict[str, Any], limits: Callable[..., Any]) -> dict[str, Any]:
    kwargs.setdefault("follow_redirects", True)
    kwargs.setdefault("limits", limits(**_SDK_LIMITS))
    return kwargs


def _wrap_transports(client: Any, wrap: Callable[[Any], Any]) -> None:
    """Wrap the client's transport and its mounts (proxies from the environment), keeping their order.

    Done after construction so that every client option (verify, cert, http2, limits, proxy, trust_env) builds
    the transports exactly as it would without us.
    """
    client._transport = wrap(client._transport)
    client._mounts = {pattern: None if t is None else wrap(t) for pattern, t in client._mounts.items()}


def _recorder(
    app: str | None,
    recorder: Recorder | None,
    sink: Sink | None,
    settings: Settings | None,
    vantage: str | None,
    providers: Iterable[Provider] | Mapping[str, Provider] | None,
    catalog: PriceCatalog | None,
    stats: RecorderStats | None,
) -> Recorder:
    if recorder is not None:
        return recorder
    return Recorder(
        app, sink=sink, settings=settings, vantage=vantage, providers=providers, catalog=catalog, stats=stats
    )


def httpx_client(
    app: str | None = None,
    *,
    recorder: Recorder | None = None,
    sink: Sink | None = None,
    settings: Settings | None = None,
    vantage: str | None = None,
    providers: Iterable[Provider] | Mapping[str, Provider] | None = None,
    catalog: PriceCatalog | None = None,
    stats: RecorderStats | None = None,
    **client_kwargs: Any,
) -> httpx.Client:
    """An ``httpx.Client`` (built with ``client_kwargs``) that records requests to known providers as ``app``."""
    rec = _recorder(app, recorder, sink, settings, vantage, providers, catalog, stats)
    client = httpx.Client(**_client_defaults(client_kwargs, httpx.Limits))
    _wrap_transports(client, lambda t: RecordingTransport(t, recorder=rec))
    return client


def async_httpx_client(
    app: str | None = None,
    *,
    recorder: Recorder | None = None,
    sink: Sink | None = None,
    settings: Settings | None = None,
    vantage: str | None = None,
    providers: Iterable[Provider] | Mapping[str, Provider] | None = None,
    catalog: PriceCatalog | None = None,
    stats: RecorderStats | None = None,
    **client_kwargs: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that records requests to known providers as ``app``."""
    rec = _recorder(app, recorder, sink, settings, vantage, providers, catalog, stats)
    client = httpx.AsyncClient(**_client_defaults(client_kwargs, httpx.Limits))
    _wrap_transports(client, lambda t: AsyncRecordingTransport(t, recorder=rec))
    return client


def httpx2_client(
    app: str | None = None,
    *,
    recorder: Recorder | None = None,
    sink: Sink | None = None,
    settings: Settings | None = None,
    vantage: str | None = None,
    providers: Iterable[Provider] | Mapping[str, Provider] | None = None,
    catalog: PriceCatalog | None = None,
    stats: RecorderStats | None = None,
    **client_kwargs: Any,
) -> httpx2.Client:
    """An ``httpx2.Client`` (for openai >= 3, anthropic >= 2) that records requests to known providers as ``app``."""
    import httpx2

    rec = _recorder(app, recorder, sink, settings, vantage, providers, catalog, stats)
    kinds = _httpx2()
    client = httpx2.Client(**_client_defaults(client_kwargs, httpx2.Limits))
    _wrap_transports(client, lambda t: kinds.sync_transport(t, rec))
    return client


def async_httpx2_client(
    app: str | None = None,
    *,
    recorder: Recorder | None = None,
    sink: Sink | None = None,
    settings: Settings | None = None,
    vantage: str | None = None,
    providers: Iterable[Provider] | Mapping[str, Provider] | None = None,
    catalog: PriceCatalog | None = None,
    stats: RecorderStats | None = None,
    **client_kwargs: Any,
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` (for AsyncOpenAI / AsyncAnthropic) that records requests as ``app``."""
    import httpx2

    rec = _recorder(app, recorder, sink, settings, vantage, providers, catalog, stats)
    kinds = _httpx2()
    client = httpx2.AsyncClient(**_client_defaults(client_kwargs, httpx2.Limits))
    _wrap_transports(client, lambda t: kinds.async_transport(t, rec))
    return client
