"""The recording core shared by the httpx transport and the proxy: one ``Exchange`` per request.

An exchange watches a request pass (request body once, then the response head and each chunk as it is passed
on), notes when each chunk arrived, and submits one captured event to a sink (the batched writer) when the
response ends. Parsing the usage, classifying the outcome and pricing it happen when the writer turns the event
into a row, on the writer's own thread, so the application's request carries as little of the recording as
possible. Nothing here ever raises into the application's request: an internal failure is logged once, counted
in ``RecorderStats`` and swallowed.

Usage is still parsed incrementally, chunk by chunk, in bounded memory (``UsageParser``): while a response is
small (up to ``DEFER_BYTES``) its chunks are only held, each with its arrival time, and the writer feeds them to
the parser in order. Past that size the request path starts parsing the held chunks itself, in steps of twice
each new chunk's size so that no chunk is held up by a large backlog, until it has caught up; from then on each
chunk is parsed as it passes. So between two chunks an exchange never holds more than ``DEFER_BYTES`` of
response body, whatever the response's size. The time to first token is the arrival time of the
chunk whose parsing first saw a token, wherever that parsing ran.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from monitor.events import Event, UsageEvent, new_event_id
from monitor.outcomes import (
    Classification,
    Outcome,
    classify,
    classify_exception,
    classify_stream_end,
    invalid_usage,
    outcome_for_status,
)
from monitor.pricing import PriceCatalog, default_catalog
from monitor.providers import Endpoint, Provider
from monitor.redact import mask_values, redact
from monitor.request_kind import RequestKind
from monitor.usage import Usage, UsageParser

log = logging.getLogger(__name__)

# Error bodies are small; a success body is kept only while it is small enough to hold a business error in an
# HTTP 200 (Zhipu does that), so memory stays bounded whatever the response size.
_KEEP_ERROR_BYTES = 64 * 1024
_KEEP_OK_BYTES = 4 * 1024

DEFER_BYTES = 256 * 1024
"""Response bytes an exchange holds for parsing off the request path; a larger response is parsed on it.

A request body up to this size is likewise kept as is and parsed off the request path; a larger one is parsed
when the request starts, so neither is held in memory past this size while the event waits for the writer.
The error body is cut out of the held chunks, so this must not be smaller than ``_KEEP_ERROR_BYTES``."""

# Each chunk arriving while the request path catches up on held chunks lets it parse this many times its own
# size of them: the backlog shrinks by at least one chunk's worth per chunk, and no single chunk waits for all.
_CATCH_UP_FACTOR = 2


class Sink(Protocol):
    """Where finished events go (``EventWriter`` is one)."""

    def submit(self, event: Event) -> None: ...


@dataclass
class RecorderStats:
    """Counters of the recording itself, shared by every exchange of one transport or proxy."""

    recorded: int = 0
    failures: int = 0
    _logged: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count_recorded(self) -> None:
        """Count one recorded exchange."""
        with self._lock:
            self.recorded += 1

    def failed(self, where: str, exc: BaseException) -> None:
        """Count a recording failure; log it once per place and exception type (never the request's data)."""
        with self._lock:
            self.failures += 1
            key = f"{where}:{type(exc).__name__}"
            first = key not in self._logged
            self._logged.add(key)
        if first:
            log.error(
                "recording failed in %s (%s: %s); the request itself is unaffected",
                where,
                type(exc).__name__,
                redact(str(exc)),
            )


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the request body says: the model asked for, whether it streams, whether it asked for usage."""

    model: str | None = None
    stream: bool = False
    include_usage: bool = False


def parse_request(body: bytes | None) -> RequestInfo:
    """Read model / stream / stream_options.include_usage from a JSON request body; anything else -> defaults."""
    if not body:
        return RequestInfo()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return RequestInfo()
    if not isinstance(data, dict):
        return RequestInfo()
    model = data.get("model")
    opts = data.get("stream_options")
    include = isinstance(opts, dict) and opts.get("include_usage") is True
    params = data.get("parameters")
    # DashScope native streams are asked for with a header; incremental_output marks them in the body.
    stream = data.get("stream") is True or (isinstance(params, dict) and params.get("incremental_output") is True)
    return RequestInfo(model=model if isinstance(model, str) else None, stream=stream, include_usage=include)


class Exchange:
    """One request being recorded. Call ``response_started``, ``feed`` per chunk, then ``finish`` once.

    What the request asked for is given either as ``request`` (already parsed, as the proxy needs it on its
    path) or as the raw ``request_body``, parsed when first needed (on the writer's thread, unless the response
    outgrows ``DEFER_BYTES``); ``stream_asked`` says the request asked for a stream outside its body (DashScope's
    ``X-DashScope-SSE`` / ``Accept`` headers), which then counts as a stream request whatever the body says.

    Every method is safe to call in any state and never raises.
    """

    __slots__ = (
        "_body",
        "_done",
        "_headers",
        "_held",
        "_parser",
        "_request",
        "_seen",
        "_status",
        "_stream_asked",
        "_t0",
        "_ttft",
        "_wall",
        "app",
        "catalog",
        "endpoint",
        "kind",
        "provider",
        "secrets",
        "sink",
        "source",
        "stats",
        "vantage",
    )

    def __init__(
        self,
        *,
        provider: Provider,
        endpoint: Endpoint,
        request: RequestInfo | None = None,
        request_body: bytes | None = None,
        stream_asked: bool = False,
        secrets: tuple[str, ...] = (),
        kind: RequestKind = "generation",
        source: Literal["transport", "proxy"],
        vantage: str,
        app: str | None,
        sink: Sink,
        stats: RecorderStats,
        catalog: PriceCatalog | None = None,
    ) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.secrets = secrets  # the credentials the request carried: masked by value in what is stored
        self.kind = kind
        self.source = source
        self.vantage = vantage
        self.app = app
        self.sink = sink
        self.stats = stats
        self.catalog = catalog
        # Wall clock for the row's ts, monotonic clock for durations; the datetime is made off the request path.
        self._wall = time.time()
        self._t0 = time.perf_counter()
        self._stream_asked = stream_asked
        self._request = request
        self._body = request_body if request is None else None
        if request_body is not None and len(request_body) > DEFER_BYTES and request is None:
            # Too big to keep until the writer gets to it: read it now, as a bounded memory requires.
            self._request = self._read_request()
            self._body = None
        self._ttft: float | None = None
        self._status: int | None = None
        self._headers: Mapping[str, str] = {}
        # Chunks not parsed yet, each with the perf_counter() of its arrival; None until the response head.
        self._held: deque[tuple[float, bytes]] | None = None
        self._parser: UsageParser | None = None  # made once parsing starts (writer, or past DEFER_BYTES)
        self._seen = 0
        self._done = False

    @property
    def ts(self) -> datetime:
        """When the request started (UTC)."""
        return datetime.fromtimestamp(self._wall, UTC)

    @property
    def request(self) -> RequestInfo:
        """What the request asked for (its body parsed on first use; defaults if that fails)."""
        info = self._request
        if info is None:
            info = self._request = self._read_request()
            self._body = None
        return info

    def _read_request(self) -> RequestInfo:
        """Parse the request body (never raises: a body the parser cannot take gives the defaults, counted)."""
        try:
            info = parse_request(self._body)
        except Exception as exc:  # e.g. RecursionError on absurdly nested JSON: record what we can
            self.stats.failed("parse_request", exc)
            info = RequestInfo()
        return _with_stream(info, self._stream_asked)

    @property
    def held_bytes(self) -> int:
        """Response bytes held, not parsed yet: never more than ``DEFER_BYTES`` once ``feed`` has returned (read
        it from the thread that feeds the exchange)."""
        return sum(len(chunk) for _, chunk in self._held) if self._held is not None else 0

    def response_started(self, status: int, headers: Mapping[str, str]) -> None:
        """The response head arrived."""
        try:
            self._status = status
            self._headers = headers
            self._held = deque()
        except Exception as exc:  # recording must never break the request
            self.stats.failed("response_started", exc)

    def feed(self, chunk: bytes) -> None:
        """A chunk of the response body, as it is passed on to the application (its arrival time is now)."""
        try:
            held = self._held
            if held is None or self._done:
                return
            now = time.perf_counter()
            size = len(chunk)
            self._seen += size
            parser = self._parser
            if parser is None:
                held.append((now, chunk))
                if self._seen > DEFER_BYTES:
                    # Too big to hold: parse on the request path from now on, catching up on the held chunks.
                    self._parser = UsageParser(self.endpoint.dialect, stream=self.request.stream)
                    self._parse_held(_CATCH_UP_FACTOR * size)
            elif held:
                held.append((now, chunk))
                self._parse_held(_CATCH_UP_FACTOR * size)
            elif parser.feed(chunk) and self._ttft is None:
                self._ttft = now
        except Exception as exc:
            self.stats.failed("feed", exc)

    def _parse_held(self, budget: int) -> None:
        """Feed the parser held chunks, oldest first, until ``budget`` bytes of them are parsed (or none is left)."""
        held = self._held
        parser = self._parser
        if held is None or parser is None:
            return
        while held and budget > 0:
            arrived, chunk = held.popleft()
            budget -= len(chunk)
            if parser.feed(chunk) and self._ttft is None:
                self._ttft = arrived

    def _usage(self) -> Usage | None:
        """Parse whatever is still held and return the response's usage (None: no response head)."""
        held = self._held
        if held is None:
            return None
        parser = self._parser
        if parser is None:
            parser = self._parser = UsageParser(self.endpoint.dialect, stream=self.request.stream)
        # Chunk by chunk only until the first token is timed; the parser gives the same result however the
        # body is cut, and one pass over the rest is cheaper than one per chunk.
        while held and not parser.first_token_seen:
            arrived, chunk = held.popleft()
            if parser.feed(chunk) and self._ttft is None:
                self._ttft = arrived
        if held:
            parser.feed(b"".join([chunk for _, chunk in held]))
            held.clear()
        return parser.finish()

    def _kept_body(self) -> bytes:
        """The whole body if it is small enough to be judged (``_KEEP_*_BYTES``), else nothing.

        While the body is that small it was never parsed on the request path, so every chunk is still held.
        """
        keep = _KEEP_ERROR_BYTES if (self._status or 0) >= 400 else _KEEP_OK_BYTES
        if self._seen > keep or self._held is None:
            return b""
        return b"".join(chunk for _, chunk in self._held)

    def finish(self, *, error: BaseException | None = None, disconnected: bool = False) -> CapturedEvent | None:
        """The response ended (``error``: it failed; ``disconnected``: the client went away). Submits the event.

        Only the facts are captured here; parsing, classifying and pricing them happen when the writer turns the
        event into a row, on its own thread, so the application's request does not wait for them. A stream whose
        end was seen is complete even if the client closed it right after (the sync openai SDK does).
        """
        if self._done:
            return None
        self._done = True
        try:
            event = CapturedEvent(self, time.perf_counter(), error, disconnected)
            self.sink.submit(event)
            self.stats.count_recorded()
            return event
        except Exception as exc:
            self.stats.failed("finish", exc)
            return None

    def build_event(
        self, end: float, error: BaseException | None, event_id: str, disconnected: bool = False
    ) -> UsageEvent:
        """The ``UsageEvent`` of this exchange: parse, classify, price, assemble (once, off the request path)."""
        # The error body first: parsing the held chunks consumes them.
        body = self._kept_body() if self._status is not None else b""
        usage = self._usage()
        verdict: Classification
        if error is not None and not (usage is not None and usage.complete):
            # Failed before the head, or mid-stream: the transport error is the outcome (status kept if seen).
            verdict = classify_exception(error)
        elif self._status is None and disconnected:
            verdict = Classification(Outcome.CANCELLED, message="the client closed the connection before any answer")
            usage = Usage(complete=False)
        elif self._status is None:
            verdict = Classification(Outcome.NETWORK_ERROR, message="no response")
        else:
            # A body only partly kept cannot be judged as a whole: judge it by status and stream end alone.
            verdict = classify(self._status, self._headers, body)
            if usage is not None and verdict.outcome == Outcome.OK:
                verdict = classify_stream_end(verdict, usage.finish_reason)
                verdict, usage = invalid_usage(verdict, usage)
        ttft = self._ttft
        if usage is not None and ttft is None and self._parser is not None and self._parser.first_token_seen:
            ttft = end  # the first token's event was only complete at the end of the body
        request = self.request
        model = (usage.model if usage else None) or request.model
        ts = self.ts
        quote = None
        if usage is not None and model:
            catalog = self.catalog or default_catalog()
            quote = catalog.quote(self.provider.id, model, usage, ts)
        kwargs: dict[str, Any] = {"usage": usage} if usage is not None else {}
        return UsageEvent(
            ts=ts,
            source=self.source,
            provider=self.provider.id,
            model=model,
            vantage=self.vantage,
            outcome=verdict.outcome,
            app=self.app,
            stream=request.stream,
            http_status=self._status,
            error_code=mask_values(verdict.error_code, self.secrets) if verdict.error_code else None,
            error_message=mask_values(verdict.message, self.secrets)
            if verdict.message and verdict.outcome != Outcome.OK
            else None,
            retry_after_s=verdict.retry_after_s,
            latency_ms=(end - self._t0) * 1000.0,
            ttft_ms=(ttft - self._t0) * 1000.0 if ttft is not None else None,
            cost=quote.cost if quote else None,
            price_source=quote.source if quote else None,
            kind=self.kind,
            event_id=event_id,
            **kwargs,
        )


def _with_stream(info: RequestInfo, stream_asked: bool) -> RequestInfo:
    """``info``, as a stream request if the request asked for a stream outside its body."""
    return replace(info, stream=True) if stream_asked and not info.stream else info


class CapturedEvent:
    """A finished exchange on its way to the writer: ``to_row()`` builds the ``UsageEvent`` row when called.

    The ``event_id`` too is made when first asked for (by the writer), off the request path; it stays the same
    afterwards. If building the row fails (a bug of ours), the row still records that the request happened, with
    what is known for certain, and the failure is counted: a captured request is never lost to our own error.
    """

    __slots__ = ("_disconnected", "_end", "_error", "_event", "_event_id", "_exchange")
    table = "usage_events"

    def __init__(self, exchange: Exchange, end: float, error: BaseException | None, disconnected: bool = False) -> None:
        self._exchange = exchange
        self._end = end
        self._error = error
        self._disconnected = disconnected
        self._event: UsageEvent | None = None
        self._event_id: str | None = None

    @property
    def event_id(self) -> str:
        """The event's UUIDv7, made on first use (by the writer: its time part is when the writer took the event,
        a moment after the request ended, which keeps ids in the order they are inserted)."""
        event_id = self._event_id
        if event_id is None:
            with _ID_LOCK:  # two threads asking at once must get the same id
                event_id = self._event_id
                if event_id is None:
                    event_id = self._event_id = new_event_id()
        return event_id

    def event(self) -> UsageEvent:
        """The usage event (built on first call)."""
        if self._event is None:
            x = self._exchange
            event_id = self.event_id
            try:
                self._event = x.build_event(self._end, self._error, event_id, self._disconnected)
            except Exception as exc:
                x.stats.failed("build_event", exc)
                status = x._status
                request = x.request
                self._event = UsageEvent(
                    ts=x.ts,
                    source=x.source,
                    provider=x.provider.id,
                    model=request.model,
                    vantage=x.vantage,
                    outcome=outcome_for_status(status) if status is not None else Outcome.NETWORK_ERROR,
                    app=x.app,
                    stream=request.stream,
                    http_status=status,
                    latency_ms=(self._end - x._t0) * 1000.0,
                    kind=x.kind,
                    event_id=event_id,
                )
        return self._event

    def to_row(self) -> dict[str, Any]:
        """The ``usage_events`` row."""
        return self.event().to_row()


_ID_LOCK = threading.Lock()


def _new_id_lock_in_child() -> None:
    # A fork while another thread held the lock would leave the child's copy locked for good.
    global _ID_LOCK
    _ID_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_id_lock_in_child)
