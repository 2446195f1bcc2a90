"""Probes against the simulated provider on 127.0.0.1: outcomes, codes, timings, deadlines, stored rows."""

from __future__ import annotations

import asyncio
import statistics
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from monitor.budget import budget_interval
from monitor.config import FreeTierPlan, settings_from_dict
from monitor.models import ProbeResultRow, UsageEventRow
from monitor.outcomes import Outcome
from monitor.probe import Target, build_request, run_probe, usage_event_of
from monitor.providers import BUILTIN_PROVIDERS, with_base_url
from monitor.scheduler import add_probe_jobs, resolve_targets
from monitor.sim import run_in_thread
from monitor.sim.profiles import ModelProfile, SimConfig
from monitor.writer import write_events

STEADY = ModelProfile(ttft_s=0.05, token_s=0.002, output_tokens=40, cached_share=0.25, reasoning_share=0.5)


@pytest.fixture(scope="module")
def sim():
    with run_in_thread(SimConfig(models={"glm-4.7": STEADY, "glm-4.7-flash": STEADY}, seed=7)) as server:
        yield server


def zai_target(sim, model="glm-4.7", **kw) -> Target:
    return Target(with_base_url(BUILTIN_PROVIDERS["zai"], f"{sim.base_url}/api/paas/v4"), model, "test", "k", **kw)


def probe(target, headers=None, deadline=10.0):
    async def go():
        async with httpx.AsyncClient(headers=headers or {}) as client:
            return await run_probe(target, client, deadline=deadline)

    return asyncio.run(go())


def test_a_healthy_probe_measures_and_prices_itself(sim):
    r = probe(zai_target(sim, max_tokens=16))
    assert r.outcome == Outcome.OK and r.http_status == 200
    assert r.usage.output_tokens == 16 and r.usage.complete
    assert r.usage.cached_input_tokens is not None and r.usage.input_tokens
    assert 0 < r.ttft_ms < r.total_ms
    assert r.tokens_per_s and r.tokens_per_s > 0
    assert r.connect_ms is not None and r.connect_ms >= 0
    assert r.cost is not None and r.cost.currency == "USD" and r.cost.amount > 0
    assert r.price_source.startswith("genai-prices")


def test_the_probe_request_is_minimal_with_thinking_off_and_stream_usage():
    target = Target(BUILTIN_PROVIDERS["zai"], "glm-4.7", "v", api_key="secret", max_tokens=8)
    url, headers, body = build_request(target)
    assert url == "https://api.z.ai/api/paas/v4/chat/completions"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["thinking"] == {"type": "disabled"} and body["max_tokens"] == 8
    assert headers["authorization"] == "Bearer secret"
    ds = Target(BUILTIN_PROVIDERS["dashscope"], "glm-4.7", "v", endpoint=BUILTIN_PROVIDERS["dashscope"].endpoints[1])
    url, headers, body = build_request(ds)
    assert url.endswith("/api/v1/services/aigc/text-generation/generation")
    assert body["parameters"]["enable_thinking"] is False and headers["x-dashscope-sse"] == "enable"


EXPECTED = {
    "1302": (Outcome.CONCURRENCY_LIMITED, 429, "1302"),
    "1303": (Outcome.RATE_LIMITED, 429, "1303"),
    "1304": (Outcome.QUOTA_EXHAUSTED, 429, "1304"),
    "1305": (Outcome.OVERLOADED, 429, "1305"),
    "1113": (Outcome.QUOTA_EXHAUSTED, 429, "1113"),
    "1301": (Outcome.CONTENT_FILTERED, 400, "1301"),
    "1308": (Outcome.QUOTA_EXHAUSTED, 429, "1308"),
    "500": (Outcome.SERVER_ERROR, 500, "500"),  # Zhipu answers {"error":{"code":"500","message":"Internal Error"}}
    "502": (Outcome.SERVER_ERROR, 502, None),
    "sensitive": (Outcome.CONTENT_FILTERED, 200, None),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_every_injected_failure_lands_in_the_database_with_its_outcome_and_code(sim, engine, kind):
    outcome, status, code = EXPECTED[kind]
    r = probe(zai_target(sim), headers={"X-Sim-Fail": kind})
    write_events(engine, [r, usage_event_of(r)])
    with engine.connect() as conn:
        row = conn.execute(select(ProbeResultRow)).one()
        usage_row = conn.execute(select(UsageEventRow)).one()
    assert (row.outcome, row.http_status, row.error_code) == (outcome, status, code)
    assert (usage_row.source, usage_row.outcome, usage_row.error_code) == ("probe", outcome, code)
    if kind == "502":
        assert "502 Bad Gateway" in row.error_message


def test_a_stall_ends_as_timeout_at_the_deadline(sim, engine):
    r = probe(zai_target(sim), headers={"X-Sim-Fail": "stall"}, deadline=0.5)
    assert r.outcome == Outcome.TIMEOUT
    assert 450 <= r.total_ms < 3000
    assert "0.5s deadline" in r.error_message
    write_events(engine, [r])
    with engine.connect() as conn:
        assert conn.execute(select(ProbeResultRow.outcome)).scalar_one() == "timeout"


def test_a_cut_stream_is_recorded_incomplete(sim, engine):
    r = probe(zai_target(sim), headers={"X-Sim-Fail": "cut", "X-Sim-Cut-After": "3"})
    assert r.outcome == Outcome.OK
    assert r.usage.complete is False and r.usage.output_tokens is None
    write_events(engine, [r, usage_event_of(r)])
    with engine.connect() as conn:
        assert conn.execute(select(ProbeResultRow.complete)).scalar_one() is False
        assert conn.execute(select(UsageEventRow.complete)).scalar_one() is False


def test_an_unreachable_provider_is_a_network_error_not_an_exception(unused_port):
    target = Target(with_base_url(BUILTIN_PROVIDERS["zai"], f"http://127.0.0.1:{unused_port}/v4"), "m", "t", "k")
    r = probe(target)
    assert r.outcome == Outcome.NETWORK_ERROR and r.http_status is None and r.ttft_ms is None


def test_measured_ttft_and_total_are_close_to_the_injected_truth(sim):
    ttft_ms, token_ms, n = 120, 5, 16
    headers = {"X-Sim-TTFT-Ms": str(ttft_ms), "X-Sim-Token-Ms": str(token_ms)}
    results = [probe(zai_target(sim, max_tokens=n), headers=headers) for _ in range(7)]
    assert all(r.outcome == Outcome.OK for r in results)
    med_ttft = statistics.median(r.ttft_ms for r in results)
    med_total = statistics.median(r.total_ms for r in results)
    # Generous bounds: the exact error is measured by bench/probe_accuracy.py.
    assert ttft_ms - 1 <= med_ttft <= ttft_ms + 40
    truth_total = ttft_ms + n * token_ms  # the closing usage chunk comes one token interval after the last token
    assert truth_total - 1 <= med_total <= truth_total + 60


def test_budget_keeps_a_50_per_day_plan_to_5_probes_a_day():
    plan = FreeTierPlan(kind="free_tier", name="free", provider="zai", requests_per_day=50)
    b = budget_interval(300, plan, 0.10)
    assert b.seconds == pytest.approx(86400 / 5)
    assert b.lengthened and "50 requests per day" in b.reason and "10%" in b.reason
    # Two targets share the same plan: each gets half.
    assert budget_interval(300, plan, 0.10, targets_on_plan=2).seconds == pytest.approx(86400 / 2.5)
    # A roomy plan leaves the configured interval alone.
    assert not budget_interval(
        300, FreeTierPlan(kind="free_tier", name="x", provider="zai", requests_per_day=10_000), 0.10
    ).lengthened


def test_the_scheduled_job_fires_at_most_5_times_in_a_day_of_virtual_time():
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    settings = settings_from_dict(
        {
            "prober": {"interval": "5m", "jitter": "15s"},
            "plans": [{"kind": "free_tier", "name": "free", "provider": "zai", "requests_per_day": 50}],
            "targets": [{"provider": "zai", "model": "glm-4.7-flash", "plan": "free"}],
        }
    )
    (st,) = resolve_targets(settings, {"ZAI_API_KEY": "k"})
    scheduler = AsyncIOScheduler(timezone=UTC)

    async def job(_):
        return None

    start = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    add_probe_jobs(scheduler, [st], job, now=start)
    trigger = scheduler.get_jobs()[0].trigger
    fire, fires = start, []
    while fire is not None and fire < start + timedelta(days=1):
        fires.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    assert len(fires) <= 5


@pytest.fixture
def unused_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
