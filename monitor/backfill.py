"""Simulated history for the demo: days of probe results and real-looking traffic, made in seconds.

Each probe slot is decided the way the simulator decides a live request (its model profiles: timing, peak-hour
factor in Asia/Shanghai, failure probabilities), and every failure is classified from the exact error body the
simulator would send, so backfilled rows look like live ones. Traffic events (apps ``crm-bot`` and
``coding-agent``) give the cost and quota pages something to show. Deterministic under a seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.events import Event, ProbeResult, UsageEvent
from monitor.outcomes import Classification, Outcome, classify
from monitor.pricing import PriceCatalog
from monitor.probe import usage_event_of
from monitor.sim.failures import render_error
from monitor.sim.profiles import ModelProfile
from monitor.sim.state import CST
from monitor.usage import Usage

PROMPT_TOKENS = 14  # what the probe prompt costs, as the simulator counts it


@dataclass(frozen=True, slots=True)
class BackfillTarget:
    """A (provider, model) to fill, with the simulator profile that decides its behaviour."""

    provider: str
    model: str
    profile: ModelProfile


def _kind(profile: ModelProfile, peak: bool, rng: random.Random) -> str:
    factor = profile.peak_failure_factor if peak else 1.0
    roll = rng.random()
    acc = 0.0
    for kind, p in profile.failure_rates.items():
        acc += p * factor
        if roll < acc:
            return kind
    return "ok"


def _verdict(kind: str) -> tuple[int, Classification]:
    reply = render_error("zhipu", kind, zid="2026", rid="r")
    return reply.status, classify(reply.status, {"content-type": reply.content_type.decode()}, reply.body)


def probe_history(
    targets: list[BackfillTarget],
    *,
    start: datetime,
    end: datetime,
    every: timedelta,
    vantage: str,
    catalog: PriceCatalog,
    max_tokens: int = 16,
    seed: int = 42,
) -> Iterator[Event]:
    """Probe results (and their usage events) for each target every ``every`` in [start, end)."""
    rng = random.Random(seed)
    ts = start
    while ts < end:
        for t in targets:
            yield from _probe(t, ts + timedelta(seconds=rng.uniform(0, 5)), vantage, catalog, max_tokens, rng)
        ts += every


def _probe(
    t: BackfillTarget, ts: datetime, vantage: str, catalog: PriceCatalog, max_tokens: int, rng: random.Random
) -> Iterator[Event]:
    p = t.profile
    peak = p.in_peak(ts.astimezone(CST).hour)
    kind = _kind(p, peak, rng)
    factor = p.peak_factor if peak else 1.0
    ttft = p.ttft_s * factor * (math.exp(rng.gauss(0.0, p.ttft_jitter)) if p.ttft_jitter else 1.0)
    n = min(max_tokens, p.output_tokens)
    cached = math.floor(PROMPT_TOKENS * p.cached_share)
    status, verdict = 200, Classification(Outcome.OK)
    usage = Usage()
    ttft_ms: float | None = ttft * 1000
    total_ms: float | None = (ttft + n * p.token_s * factor) * 1000
    if kind == "stall":
        verdict, ttft_ms, total_ms = Classification(Outcome.TIMEOUT, message="no complete answer"), None, 60_000.0
        status = 0
    elif kind in ("cut", "reset"):
        usage = Usage(model=t.model, complete=False)
    elif kind == "sensitive":
        verdict = Classification(Outcome.CONTENT_FILTERED)
        usage = Usage(model=t.model, finish_reason="sensitive", complete=True)
    elif kind != "ok":
        status, verdict = _verdict(kind)
        ttft_ms, total_ms = None, rng.uniform(20, 120)
    else:
        usage = Usage(
            input_tokens=PROMPT_TOKENS,
            cached_input_tokens=cached,
            output_tokens=n,
            model=t.model,
            finish_reason="length",
        )
    quote = catalog.quote(t.provider, t.model, usage, ts) if usage.output_tokens else None
    tps = (n - 1) / ((total_ms - ttft_ms) / 1000) if usage.output_tokens and ttft_ms and total_ms else None
    result = ProbeResult(
        ts=ts,
        provider=t.provider,
        model=t.model,
        vantage=vantage,
        outcome=verdict.outcome,
        usage=usage,
        http_status=status or None,
        error_code=verdict.error_code,
        error_message=verdict.message,
        retry_after_s=verdict.retry_after_s,
        connect_ms=None,
        ttft_ms=ttft_ms,
        total_ms=total_ms,
        tokens_per_s=tps,
        cost=quote.cost if quote else None,
        price_source=quote.source if quote else None,
    )
    yield result
    yield usage_event_of(result)


TRAFFIC = (
    # app, provider, model, requests per hour (day time), input tokens, cached share, output tokens
    ("crm-bot", "zai", "glm-4.7", 12, 2400, 0.4, 350),
    ("crm-bot", "zai", "glm-4.7-flash", 20, 900, 0.1, 200),
    ("research", "bigmodel", "glm-5", 4, 6000, 0.2, 1200),
    ("support-jp", "dashscope", "glm-4.6", 6, 1800, 0.3, 400),
    ("coding-agent", "zai-coding", "glm-4.7", 30, 12000, 0.7, 800),
)


def traffic_history(
    *, start: datetime, end: datetime, vantage: str, catalog: PriceCatalog, seed: int = 7
) -> Iterator[Event]:
    """Hourly real-traffic usage events (source ``proxy``), busier in Tokyo office hours."""
    rng = random.Random(seed)
    hour = start.replace(minute=0, second=0, microsecond=0)
    tokyo = timedelta(hours=9)
    while hour < end:
        local_hour = (hour + tokyo).hour
        busy = 1.0 if 9 <= local_hour < 19 else 0.2
        for app, provider, model, per_hour, tin, cshare, tout in TRAFFIC:
            for _ in range(_poisson(rng, per_hour * busy)):
                ts = hour + timedelta(seconds=rng.uniform(0, 3600))
                if ts >= end:
                    continue
                inp = max(10, int(rng.gauss(tin, tin * 0.3)))
                out = max(1, int(rng.gauss(tout, tout * 0.4)))
                throttled = rng.random() < (0.06 if model.endswith("flash") else 0.01)
                if throttled:
                    yield UsageEvent(
                        ts=ts, source="proxy", provider=provider, model=model, vantage=vantage, app=app,
                        outcome=Outcome.CONCURRENCY_LIMITED, http_status=429, error_code="1302",
                    )  # fmt: skip
                    continue
                usage = Usage(
                    input_tokens=inp,
                    cached_input_tokens=int(inp * cshare),
                    output_tokens=out,
                    reasoning_tokens=int(out * 0.3),
                    model=model,
                    finish_reason="stop",
                )
                quote = catalog.quote(provider, model, usage, ts)
                yield UsageEvent(
                    ts=ts,
                    source="proxy",
                    provider=provider,
                    model=model,
                    vantage=vantage,
                    app=app,
                    outcome=Outcome.OK,
                    usage=usage,
                    stream=True,
                    http_status=200,
                    latency_ms=rng.uniform(800, 9000),
                    ttft_ms=rng.uniform(250, 1500),
                    cost=quote.cost if quote else None,
                    price_source=quote.source if quote else None,
                )
        hour += timedelta(hours=1)


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method: fine for the small rates used here.
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
