"""The recording core shared by the httpx transport and the proxy: one ``Exchange`` per request.

An exchange watches a request pass (request body once, then the response head and each chunk as it is passed
on), parses usage incrementally, notes the time to first token, classifies the outcome, prices it and submits
one ``UsageEvent`` to a sink (the batched writer) when the response ends. Nothing here ever raises into the
application's request: an internal failure is logged once, counted in ``RecorderStats`` and swallowed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from monitor.events import Event, UsageEvent, new_event_id
from monitor.outcomes import (
    Classification,
    Outcome,
    classify,
    classify_exception,
    classify_stream_end,
    outcome_for_status,
)
from monitor.pricing import PriceCatalog, default_catalog
from monitor.providers import Endpoint, Provider
from monitor.redact import redact
from monitor.usage import UsageParser

log = logging.getLogger(__name__)

# Error bodies are small; a success body is kept only while it is small enough to hold a business error in an
# HTTP 200 (Zhipu does that), so memory stays bounded whatever the response size.
_KEEP_ERROR_BYTES = 64 * 1024
_KEEP_OK_BYTES = 4 * 1024


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

    Every method is safe to call in any state and never raises.
    """

    def __init__(
        self,
        *,
        provider: Provider,
        endpoint: Endpoint,
        request: RequestInfo,
        source: Literal["transport", "proxy"],
        vantage: str,
        app: str | None,
        sink: Sink,
        stats: RecorderStats,
        catalog: PriceCatalog | None = None,
    ) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.request = request
        self.source = source
        self.vantage = vantage
        self.app = app
        self.sink = sink
        self.stats = stats
        self.catalog = catalog
        self.ts = datetime.now(UTC)
        self._t0 = time.perf_counter()
        self._ttft: float | None = None
        self._status: int | None = None
        self._headers: Mapping[str, str] = {}
        self._parser: UsageParser | None = None
        self._error_body = bytearray()
        self._seen = 0
        self._done = False

    def response_started(self, status: int, headers: Mapping[str, str]) -> None:
        """The response head arrived."""
        try:
            self._status = status
            self._headers = headers
            self._parser = UsageParser(self.endpoint.dialect, stream=self.request.stream)
        except Exception as exc:  # recording must never break the request
            self.stats.failed("response_started", exc)

    def feed(self, chunk: bytes) -> None:
        """A chunk of the response body, as it is passed on to the application."""
        try:
            if self._parser is None or self._done:
                return
            if self._parser.feed(chunk) and self._ttft is None:
                self._ttft = time.perf_counter()
            self._seen += len(chunk)
            keep = _KEEP_ERROR_BYTES if (self._status or 0) >= 400 else _KEEP_OK_BYTES
            if self._seen <= keep:
                self._error_body += chunk
        except Exception as exc:
            self.stats.failed("feed", exc)

    def finish(self, *, error: BaseException | None = None, disconnected: bool = False) -> CapturedEvent | None:
        """The response ended (``error``: it failed; ``disconnected``: the client went away). Submits the event.

        Only the facts are captured here; classifying and pricing them happen when the writer turns the event
        into a row, on its own thread, so the application's request does not wait for them. A stream whose end
        was seen is complete even if the client closed it right after (the sync openai SDK does).
        """
        if self._done:
            return None
        self._done = True
        try:
            event = CapturedEvent(self, time.perf_counter(), error)
            self.sink.submit(event)
            self.stats.count_recorded()
            return event
        except Exception as exc:
            self.stats.failed("finish", exc)
            return None

    def build_event(self, end: float, error: BaseException | None, event_id: str) -> UsageEvent:
        """The ``UsageEvent`` of this exchange: classify, price, assemble (called once, off the request path)."""
        usage = self._parser.finish() if self._parser is not None else None
        verdict: Classification
        if error is not None and not (usage is not None and usage.complete):
            # Failed before the head, or mid-stream: the transport error is the outcome (status kept if seen).
            verdict = classify_exception(error)
        elif self._status is None:
            verdict = Classification(Outcome.NETWORK_ERROR, message="no response")
        else:
            # A body only partly kept cannot be judged as a whole: judge it by status and stream end alone.
            complete_body = self._seen <= (_KEEP_ERROR_BYTES if self._status >= 400 else _KEEP_OK_BYTES)
            body = bytes(self._error_body) if complete_body else b""
            verdict = classify(self._status, self._headers, body)
            if usage is not None and verdict.outcome == Outcome.OK:
                verdict = classify_stream_end(verdict, usage.finish_reason)
        ttft = self._ttft
        if usage is not None and ttft is None and self._parser is not None and self._parser.first_token_seen:
            ttft = end
        model = (usage.model if usage else None) or self.request.model
        quote = None
        if usage is not None and model:
            catalog = self.catalog or default_catalog()
            quote = catalog.quote(self.provider.id, model, usage, self.ts)
        kwargs: dict[str, Any] = {"usage": usage} if usage is not None else {}
        return UsageEvent(
            ts=self.ts,
            source=self.source,
            provider=self.provider.id,
            model=model,
            vantage=self.vantage,
            outcome=verdict.outcome,
            app=self.app,
            stream=self.request.stream,
            http_status=self._status,
            error_code=verdict.error_code,
            error_message=verdict.message if verdict.outcome != Outcome.OK else None,
            retry_after_s=verdict.retry_after_s,
            latency_ms=(end - self._t0) * 1000.0,
            ttft_ms=(ttft - self._t0) * 1000.0 if ttft is not None else None,
            cost=quote.cost if quote else None,
            price_source=quote.source if quote else None,
            event_id=event_id,
            **kwargs,
        )


class CapturedEvent:
    """A finished exchange on its way to the writer: ``to_row()`` builds the ``UsageEvent`` row when called.

    If building it fails (a bug of ours), the row still records that the request happened, with what is known
    for certain, and the failure is counted: a captured request is never lost to our own error.
    """

    __slots__ = ("_end", "_error", "_event", "_exchange", "event_id")
    table = "usage_events"

    def __init__(self, exchange: Exchange, end: float, error: BaseException | None) -> None:
        self._exchange = exchange
        self._end = end
        self._error = error
        self._event: UsageEvent | None = None
        self.event_id = new_event_id()

    def event(self) -> UsageEvent:
        """The usage event (built on first call)."""
        if self._event is None:
            x = self._exchange
            try:
                self._event = x.build_event(self._end, self._error, self.event_id)
            except Exception as exc:
                x.stats.failed("build_event", exc)
                status = x._status
                self._event = UsageEvent(
                    ts=x.ts,
                    source=x.source,
                    provider=x.provider.id,
                    model=x.request.model,
                    vantage=x.vantage,
                    outcome=outcome_for_status(status) if status is not None else Outcome.NETWORK_ERROR,
                    app=x.app,
                    stream=x.request.stream,
                    http_status=status,
                    latency_ms=(self._end - x._t0) * 1000.0,
                    event_id=self.event_id,
                )
        return self._event

    def to_row(self) -> dict[str, Any]:
        """The ``usage_events`` row."""
        return self.event().to_row()
