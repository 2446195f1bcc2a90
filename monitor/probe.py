"""One probe: a minimal streaming chat request that measures how a provider answers right now.

``run_probe`` sends a tiny prompt with a small ``max_tokens``, thinking off where the provider allows it and
usage requested in the stream, and measures connect time, time to first token (first content or reasoning
token), total time, output tokens and output speed. It classifies the outcome, prices the probe itself, never
retries, ends at the deadline and never raises on a provider failure: failures are data.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import httpx

from monitor.events import ProbeResult, UsageEvent
from monitor.outcomes import (
    Classification,
    Outcome,
    classify,
    classify_exception,
    classify_stream_end,
    invalid_usage,
)
from monitor.pricing import PriceCatalog, default_catalog
from monitor.providers import Endpoint, Provider
from monitor.redact import credentials, mask_values
from monitor.usage import Usage, UsageParser

# Probe answers are a few hundred bytes; keep up to this much of the body to classify error bodies.
_KEEP_BODY_BYTES = 64 * 1024
_EVENT_NAMESPACE = uuid.UUID("5b0f3c52-53f7-4c3c-9d0c-6c4f1f0c9a10")
ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True, slots=True)
class Target:
    """One (provider, model) probed from one vantage, with what its requests need."""

    provider: Provider
    model: str
    vantage: str
    api_key: str | None = None
    max_tokens: int = 16
    prompt: str = "Reply with the single word: OK"
    endpoint: Endpoint | None = None

    @property
    def name(self) -> str:
        """``provider/model``, for logs and tables."""
        return f"{self.provider.id}/{self.model}"

    @property
    def chosen_endpoint(self) -> Endpoint:
        """The endpoint probed: the target's own or the provider's default."""
        return self.endpoint or self.provider.default_endpoint


def build_request(target: Target) -> tuple[str, dict[str, str], dict[str, Any]]:
    """URL, headers and JSON body of ``target``'s probe in its endpoint's dialect."""
    ep = target.chosen_endpoint
    messages = [{"role": "user", "content": target.prompt}]
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    body: dict[str, Any]
    if ep.dialect == "anthropic":
        body = {"model": target.model, "max_tokens": target.max_tokens, "messages": messages, "stream": True}
        headers["anthropic-version"] = ANTHROPIC_VERSION
    elif ep.dialect == "dashscope":
        parameters = {"max_tokens": target.max_tokens, "incremental_output": True, "result_format": "message"}
        parameters.update(_plain(target.provider.thinking_off))
        body = {"model": target.model, "input": {"messages": messages}, "parameters": parameters}
        headers["x-dashscope-sse"] = "enable"
    else:
        body = {
            "model": target.model,
            "messages": messages,
            "max_tokens": target.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            **_plain(target.provider.thinking_off),
        }
    if target.api_key:
        if ep.auth == "x-api-key":
            headers["x-api-key"] = target.api_key
        else:
            headers["authorization"] = f"Bearer {target.api_key}"
    return ep.chat_url, headers, body


def _plain(value: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(value)))  # type: ignore[no-any-return]


class _Timings:
    """Monotonic timestamps of one probe, fed by httpx's connection trace.

    TTFT and total are measured from the moment the request starts going on the wire (after any connection
    set-up, which is ``connect_ms`` of its own), so they describe the provider, not our client's queueing.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.connect_started: float | None = None
        self.connected: float | None = None
        self.sent: float | None = None
        self.first_token: float | None = None
        self.end: float | None = None

    async def trace(self, name: str, info: Mapping[str, Any]) -> None:
        if name == "connection.connect_tcp.started":
            self.connect_started = time.perf_counter()
        elif name in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self.connected = time.perf_counter()
        elif name == "http11.send_request_headers.started" or name == "http2.send_request_headers.started":
            self.sent = time.perf_counter()

    def ms(self, until: float | None) -> float | None:
        base = self.sent if self.sent is not None else self.start
        return None if until is None else (until - base) * 1000.0

    def connect_ms(self) -> float | None:
        if self.connect_started is None or self.connected is None:
            return None
        return (self.connected - self.connect_started) * 1000.0


async def run_probe(
    target: Target,
    client: httpx.AsyncClient,
    *,
    deadline: float,
    catalog: PriceCatalog | None = None,
    now: datetime | None = None,
) -> ProbeResult:
    """Probe ``target`` once through ``client`` and return what happened, within ``deadline`` seconds.

    Provider failures (HTTP errors, garbage, stalls, dropped connections) come back as a ``ProbeResult`` with
    their outcome; only bugs in GLM Monitor raise.
    """
    ts = now or datetime.now(UTC)
    url, headers, body = build_request(target)
    parser = UsageParser(target.chosen_endpoint.dialect, stream=True)
    timings = _Timings()
    kept = bytearray()
    status: int | None = None
    resp_headers: Mapping[str, str] = {}
    failure: Classification | None = None
    try:
        async with asyncio.timeout(deadline):
            request = client.build_request("POST", url, headers=headers, json=body)
            request.extensions["trace"] = timings.trace
            response = await client.send(request, stream=True)
            try:
                status, resp_headers = response.status_code, response.headers
                async for chunk in response.aiter_raw():
                    if len(kept) < _KEEP_BODY_BYTES:
                        kept += chunk[: _KEEP_BODY_BYTES - len(kept)]
                    if parser.feed(chunk) and timings.first_token is None:
                        timings.first_token = time.perf_counter()
            finally:
                await response.aclose()
    except TimeoutError:
        failure = Classification(Outcome.TIMEOUT, message=f"no complete answer within the {deadline:g}s deadline")
    except (httpx.HTTPError, OSError) as exc:
        failure = classify_exception(exc)
    timings.end = time.perf_counter()
    usage = parser.finish()
    if timings.first_token is None and parser.first_token_seen:
        timings.first_token = timings.end
    if failure is None:
        assert status is not None
        failure = classify_stream_end(classify(status, resp_headers, bytes(kept)), usage.finish_reason)
        failure, usage = invalid_usage(failure, usage)
    failure = _masked(failure, credentials(headers.items()))
    return _result(target, ts, timings, usage, status, failure, catalog or default_catalog())


def _masked(verdict: Classification, secrets: tuple[str, ...]) -> Classification:
    """``verdict`` with the probe's own key masked by value in its message and code (an upstream may echo it)."""
    if not secrets or (verdict.message is None and verdict.error_code is None):
        return verdict
    return replace(
        verdict,
        message=mask_values(verdict.message, secrets) if verdict.message else None,
        error_code=mask_values(verdict.error_code, secrets) if verdict.error_code else None,
    )


def _result(
    target: Target,
    ts: datetime,
    t: _Timings,
    usage: Usage,
    status: int | None,
    verdict: Classification,
    catalog: PriceCatalog,
) -> ProbeResult:
    ttft_ms = t.ms(t.first_token)
    total_ms = t.ms(t.end)
    tokens_per_s = None
    if usage.output_tokens and t.first_token is not None and t.end is not None and t.end > t.first_token:
        # Speed after the first token: the first token's wait is TTFT, not generation speed.
        generated = max(usage.output_tokens - 1, 1)
        tokens_per_s = generated / (t.end - t.first_token)
    quote = catalog.quote(target.provider.id, usage.model or target.model, usage, ts)
    return ProbeResult(
        ts=ts,
        provider=target.provider.id,
        model=target.model,
        vantage=target.vantage,
        outcome=verdict.outcome,
        usage=usage,
        http_status=status,
        error_code=verdict.error_code,
        error_message=verdict.message if verdict.outcome != Outcome.OK else None,
        retry_after_s=verdict.retry_after_s,
        connect_ms=t.connect_ms(),
        ttft_ms=ttft_ms,
        total_ms=total_ms,
        tokens_per_s=tokens_per_s,
        cost=quote.cost if quote else None,
        price_source=quote.source if quote else None,
    )


def usage_event_of(result: ProbeResult) -> UsageEvent:
    """The usage event a probe also records (source ``probe``), so probes count in spend and quota burn.

    Its id is derived from the probe's, so replaying both stores each once.
    """
    return UsageEvent(
        ts=result.ts,
        source="probe",
        provider=result.provider,
        model=result.usage.model or result.model,
        vantage=result.vantage,
        outcome=result.outcome,
        usage=result.usage,
        app="glm-monitor-probe",
        stream=True,
        http_status=result.http_status,
        error_code=result.error_code,
        error_message=result.error_message,
        retry_after_s=result.retry_after_s,
        latency_ms=result.total_ms,
        ttft_ms=result.ttft_ms,
        cost=result.cost,
        price_source=result.price_source,
        event_id=str(uuid.uuid5(_EVENT_NAMESPACE, result.event_id)),
    )
