"""Analytics benchmark: rollup build time and the dashboard's analytics calls on 6 months of data.

Builds a database of synthetic raw rows (default 10M ``usage_events`` and 1M ``probe_results`` spread over the
last ``--months`` months: ~30 provider/model targets on zai, bigmodel, dashscope and openrouter, 10 apps, 2
vantages, ~90% ok with 429s, throttling codes and errors, costs in USD and CNY) in SQLite and in Postgres,
prints the insert rate and the time of ``refresh_rollups`` from empty, then runs each analytics call the
dashboard makes (with its usual ranges: last 24 h, 7 days, 30 days and the whole period) ``--repeat`` times
and prints p50 / p95 in milliseconds. Goal: every call p95 <= 300 ms.

That no call grows with the raw row count is shown directly: the same calls are timed again on one
connection, first as is and then inside a transaction that has emptied both raw tables (``DELETE`` on SQLite,
``TRUNCATE`` on Postgres; rolled back afterwards, so the database is unchanged). The analytics read only the
rollups, so both columns must agree. ``quota_statuses`` is timed too but left out of that check: it reads whole
hours from the hourly rollups and ``usage_events`` only for the partial hours at the ends of its windows (minute ..
week) and for hours not rolled up yet, see ``monitor.quota``.

    python bench/analytics.py --usage-events 200000 --probe-results 20000      # quick check
    python bench/analytics.py                                                  # the full 10M / 1M run
    python bench/analytics.py --reuse --skip-postgres                          # time again, no rebuild

Postgres: the scratch database ``glm_bench_analytics`` is (re)created on the server named by --postgres-url
(any database there; it is only used to create the scratch one) and kept afterwards for ``--reuse``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import numpy as np
import psycopg
from sqlalchemy import Connection, Engine, Table, func, select, text
from sqlalchemy.engine import make_url

from monitor.analytics import (
    PEAK_SPAN,
    PROFILE_SPAN,
    Filters,
    Granularity,
    PeakWindow,
    compare_providers,
    costs,
    dimensions,
    health,
    latency_percentiles,
    latency_profile,
    outcome_breakdown,
    peak_slowdown,
    spend_forecast,
    throttle_rates,
)
from monitor.config import Settings, settings_from_dict
from monitor.demo import DEMO_PLANS
from monitor.models import ProbeHourlyRow, ProbeResultRow, UsageEventRow
from monitor.quota import quota_statuses
from monitor.rollup import DEFAULT_OVERLAP, floor_hour, refresh_rollups
from monitor.store import make_engine, normalise_url, upgrade
from monitor.writer import insert_rows

DEFAULT_DIR = Path("/tmp/glm-bench")
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DB = "glm_bench_analytics"
CHUNK = 50_000
GOAL_MS = 300.0

# (provider, model, currency, input price, output price per 1M tokens, median TTFT ms, peak factor)
TARGETS: tuple[tuple[str, str, str, float, float, float, float], ...] = (
    ("zai", "glm-5", "USD", 1.0, 3.2, 900, 1.3),
    ("zai", "glm-4.7", "USD", 0.6, 2.2, 700, 1.2),
    ("zai", "glm-4.7-flash", "USD", 0.0, 0.0, 500, 1.5),
    ("zai", "glm-4.6", "USD", 0.6, 2.2, 650, 1.2),
    ("zai", "glm-4.5", "USD", 0.6, 2.2, 600, 1.1),
    ("zai", "glm-4.5-air", "USD", 0.2, 1.1, 400, 1.1),
    ("zai", "glm-4.5-flash", "USD", 0.0, 0.0, 350, 1.4),
    ("zai", "glm-4.5v", "USD", 0.6, 1.8, 800, 1.1),
    ("bigmodel", "glm-5", "CNY", 4.0, 18.0, 1000, 3.0),
    ("bigmodel", "glm-4.7", "CNY", 2.0, 8.0, 750, 2.0),
    ("bigmodel", "glm-4.7-flash", "CNY", 0.0, 0.0, 450, 1.6),
    ("bigmodel", "glm-4.6", "CNY", 2.0, 8.0, 700, 1.8),
    ("bigmodel", "glm-4.5", "CNY", 2.0, 8.0, 650, 1.5),
    ("bigmodel", "glm-4.5-air", "CNY", 0.8, 2.0, 420, 1.4),
    ("bigmodel", "glm-4-plus", "CNY", 5.0, 5.0, 600, 1.3),
    ("bigmodel", "glm-4-flash", "CNY", 0.0, 0.0, 300, 1.2),
    ("dashscope", "glm-4.6", "CNY", 3.0, 14.0, 800, 1.3),
    ("dashscope", "glm-4.5", "CNY", 3.0, 14.0, 750, 1.3),
    ("dashscope", "glm-4.5-air", "CNY", 0.8, 6.0, 500, 1.2),
    ("dashscope", "qwen-plus", "CNY", 0.8, 2.0, 450, 1.2),
    ("dashscope", "qwen-max", "CNY", 2.4, 9.6, 800, 1.3),
    ("dashscope", "qwen-turbo", "CNY", 0.3, 0.6, 250, 1.1),
    ("dashscope", "qwen3-coder-plus", "CNY", 4.0, 16.0, 900, 1.2),
    ("openrouter", "z-ai/glm-5", "USD", 1.0, 3.2, 1100, 1.1),
    ("openrouter", "z-ai/glm-4.7", "USD", 0.6, 2.2, 850, 1.1),
    ("openrouter", "z-ai/glm-4.6", "USD", 0.6, 2.2, 800, 1.1),
    ("openrouter", "z-ai/glm-4.5", "USD", 0.6, 2.2, 780, 1.0),
    ("openrouter", "z-ai/glm-4.5-air", "USD", 0.2, 1.1, 520, 1.0),
    ("openrouter", "qwen/qwen3-coder", "USD", 0.4, 1.6, 700, 1.0),
    ("openrouter", "anthropic/claude-sonnet-4", "USD", 3.0, 15.0, 1200, 1.0),
)
APPS = ("claude-code", "cline", "cursor", "roo", "aider", "chatbot", "batch-etl", "evals", "notebook", "ci-review")
VANTAGES = ("tokyo", "shanghai")
SOURCES = ("transport", "proxy", "probe")
PROBE_SHARE = 0.03

# (outcome, HTTP status, error code per provider (None: none), weight). 429s come with several outcomes.
OUTCOMES: tuple[tuple[str, int | None, dict[str, str | None], float], ...] = (
    ("ok", 200, {}, 0.895),
    ("rate_limited", 429, {"dashscope": "Throttling.RateQuota", "zai": "1300", "bigmodel": "1300"}, 0.03),
    ("concurrency_limited", 429, {"zai": "1302", "bigmodel": "1302", "dashscope": "Throttling"}, 0.02),
    ("overloaded", 429, {"zai": "1305", "bigmodel": "1305", "dashscope": "Throttling.EngineOverload"}, 0.015),
    ("overloaded", 503, {}, 0.005),
    ("quota_exhausted", 429, {"zai": "1308", "bigmodel": "1304", "dashscope": "Arrearage"}, 0.005),
    ("server_error", 500, {"zai": "500", "bigmodel": "500", "dashscope": "InternalError"}, 0.01),
    ("timeout", None, {}, 0.008),
    ("client_error", 400, {"zai": "1214", "bigmodel": "1214", "dashscope": "InvalidParameter"}, 0.008),
    ("auth_error", 401, {"zai": "1000", "bigmodel": "1000", "dashscope": "InvalidApiKey"}, 0.002),
    ("content_filtered", 200, {"zai": "1301", "bigmodel": "1301"}, 0.002),
)
OUTCOME_P = np.array([o[3] for o in OUTCOMES]) / sum(o[3] for o in OUTCOMES)
# Real traffic leans on the big models; probes hit every target equally.
TARGET_P = np.array([3.0 if "flash" not in t[1] else 1.0 for t in TARGETS]) / sum(
    3.0 if "flash" not in t[1] else 1.0 for t in TARGETS
)
_SCALE10 = Decimal(1).scaleb(-10)
APP_P = np.array([30, 20, 12, 8, 6, 6, 6, 5, 4, 3], dtype=float) / 100
APP_PROFILES = np.random.default_rng(0).choice(len(TARGETS), (len(APPS), 3), p=TARGET_P)
"""Three targets per app, picked once."""
APP_VANTAGE = np.arange(len(APPS)) % len(VANTAGES)
APP_SOURCE = np.where(np.arange(len(APPS)) % 3 == 0, SOURCES.index("proxy"), SOURCES.index("transport"))


# --- data -------------------------------------------------------------------------------------------------


def _timestamps(rng: np.random.Generator, n: int, start: float, span: float) -> np.ndarray:
    """``n`` sorted epoch seconds in ``[start, start + span)``, denser in the daytime of China (UTC+8)."""
    ts = np.sort(rng.uniform(start, start + span, int(n * 1.6)))
    local_hour = ((ts + 8 * 3600) % 86_400) / 3600
    keep = rng.uniform(0, 1, ts.size) < np.where((local_hour >= 9) & (local_hour < 23), 1.0, 0.35)
    ts = ts[keep]
    if ts.size < n:
        ts = np.sort(np.concatenate([ts, rng.uniform(start, start + span, n - ts.size)]))
    return ts[:n] if ts.size == n else np.sort(rng.choice(ts, n, replace=False))


def _peak(ts: np.ndarray) -> np.ndarray:
    """True where the time falls in 15:00-18:00 China Standard Time (the providers' peak)."""
    hour = ((ts + 8 * 3600) % 86_400) // 3600
    return (hour >= 15) & (hour < 18)


def _cost(tokens_in: int, tokens_out: int, p_in: float, p_out: float) -> Decimal:
    return Decimal(round((tokens_in * p_in + tokens_out * p_out) * 10_000)) * _SCALE10


def usage_chunks(n: int, start: float, span: float, seed: int = 1) -> Iterator[list[dict[str, Any]]]:
    """``usage_events`` row dicts, ``CHUNK`` at a time, in time order (ids and timestamps rise together)."""
    rng = np.random.default_rng(seed)
    chunks = max(1, math.ceil(n / CHUNK))
    step = span / chunks
    made = 0
    for c in range(chunks):
        m = min(CHUNK, n - made)
        ts = _timestamps(rng, m, start + c * step, step)
        outcome = rng.choice(len(OUTCOMES), m, p=OUTCOME_P)
        # Each app talks to a few targets from one machine through one source (as real setups do); the
        # prober's own usage rows carry no app and cover every target from both vantages.
        app = rng.choice(len(APPS), m, p=APP_P)
        profile = APP_PROFILES[app, rng.integers(0, APP_PROFILES.shape[1], m)]
        probe = rng.uniform(0, 1, m) < PROBE_SHARE
        target = np.where(probe, rng.choice(len(TARGETS), m, p=TARGET_P), profile)
        app_none = probe | (rng.uniform(0, 1, m) < 0.01)
        vantage = np.where(probe, rng.integers(0, len(VANTAGES), m), APP_VANTAGE[app])
        source = np.where(probe, SOURCES.index("probe"), APP_SOURCE[app])
        stream = rng.uniform(0, 1, m) < 0.7
        tin = rng.lognormal(8.0, 1.0, m).astype(np.int64) + 10
        cached = (tin * rng.uniform(0, 0.8, m)).astype(np.int64)
        tout = rng.lognormal(6.0, 0.9, m).astype(np.int64) + 1
        base = np.array([TARGETS[t][5] for t in range(len(TARGETS))])[target]
        factor = np.where(_peak(ts), np.array([t[6] for t in TARGETS])[target], 1.0)
        ttft = base * factor * rng.lognormal(0.0, 0.35, m)
        latency = ttft + tout * rng.uniform(8, 30, m)
        retry = rng.integers(1, 60, m)
        rows: list[dict[str, Any]] = []
        for i in range(m):
            t = TARGETS[int(target[i])]
            o = OUTCOMES[int(outcome[i])]
            ok = o[0] == "ok" or o[0] == "content_filtered"
            a = None if app_none[i] else APPS[int(app[i])]
            i_in, i_out, i_cached = int(tin[i]), int(tout[i]), int(cached[i])
            made += 1
            rows.append(
                {
                    "event_id": f"bench-u-{made:028d}",
                    "ts": datetime.fromtimestamp(float(ts[i]), UTC),
                    "source": SOURCES[int(source[i])],
                    "provider": t[0],
                    "model": t[1],
                    "vantage": VANTAGES[int(vantage[i])],
                    "app": a,
                    "stream": bool(stream[i]),
                    "outcome": o[0],
                    "http_status": o[1],
                    "error_code": o[2].get(t[0]),
                    "error_message": None if ok else f"{o[0]} (synthetic)",
                    "retry_after_s": float(retry[i]) if o[1] == 429 and t[0] != "dashscope" else None,
                    "latency_ms": float(latency[i]) if ok else None,
                    "ttft_ms": float(ttft[i]) if ok and stream[i] else None,
                    "input_tokens": i_in if ok else None,
                    "cached_input_tokens": i_cached if ok else None,
                    "cache_write_tokens": None,
                    "output_tokens": i_out if ok else None,
                    "reasoning_tokens": None,
                    "images": None,
                    "request_id": None,
                    "finish_reason": "stop" if ok else None,
                    "complete": True,
                    "cost_amount": _cost(i_in, i_out, t[3], t[4]) if ok else None,
                    "cost_currency": t[2] if ok else None,
                    "price_source": "catalog" if ok else None,
                }
            )
        yield rows


def probe_chunks(n: int, start: float, span: float, seed: int = 2) -> Iterator[list[dict[str, Any]]]:
    """``probe_results`` row dicts, ``CHUNK`` at a time, in time order: every target from both vantages."""
    rng = np.random.default_rng(seed)
    chunks = max(1, math.ceil(n / CHUNK))
    step = span / chunks
    made = 0
    for c in range(chunks):
        m = min(CHUNK, n - made)
        ts = np.sort(rng.uniform(start + c * step, start + (c + 1) * step, m))
        target = rng.integers(0, len(TARGETS), m)
        outcome = rng.choice(len(OUTCOMES), m, p=OUTCOME_P)
        vantage = rng.integers(0, len(VANTAGES), m)
        base = np.array([TARGETS[t][5] for t in range(len(TARGETS))])[target]
        factor = np.where(_peak(ts), np.array([t[6] for t in TARGETS])[target], 1.0)
        ttft = base * factor * rng.lognormal(0.0, 0.3, m)
        tout = rng.integers(8, 40, m)
        total = ttft + tout * rng.uniform(10, 30, m)
        connect = rng.lognormal(3.5, 0.5, m)
        retry = rng.integers(1, 60, m)
        rows: list[dict[str, Any]] = []
        for i in range(m):
            t = TARGETS[int(target[i])]
            o = OUTCOMES[int(outcome[i])]
            ok = o[0] == "ok"
            made += 1
            tot = float(total[i])
            out_tok = int(tout[i])
            rows.append(
                {
                    "event_id": f"bench-p-{made:028d}",
                    "ts": datetime.fromtimestamp(float(ts[i]), UTC),
                    "provider": t[0],
                    "model": t[1],
                    "vantage": VANTAGES[int(vantage[i])],
                    "outcome": o[0],
                    "http_status": o[1],
                    "error_code": o[2].get(t[0]),
                    "error_message": None if ok else f"{o[0]} (synthetic)",
                    "retry_after_s": float(retry[i]) if o[1] == 429 else None,
                    "connect_ms": float(connect[i]) if o[0] != "timeout" else None,
                    "ttft_ms": float(ttft[i]) if ok else None,
                    "total_ms": tot if ok else None,
                    "tokens_per_s": out_tok / (tot / 1000) if ok else None,
                    "input_tokens": 12 if ok else None,
                    "cached_input_tokens": 0 if ok else None,
                    "cache_write_tokens": None,
                    "output_tokens": out_tok if ok else None,
                    "reasoning_tokens": None,
                    "images": None,
                    "request_id": None,
                    "finish_reason": "length" if ok else None,
                    "complete": True,
                    "cost_amount": _cost(12, out_tok, t[3], t[4]) if ok else None,
                    "cost_currency": t[2] if ok else None,
                    "price_source": "catalog" if ok else None,
                }
            )
        yield rows


# --- databases ----------------------------------------------------------------------------------------------


def pg_admin(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection to the server's admin database named by ``url``."""
    libpq = make_url(normalise_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(libpq, autocommit=True)


def pg_scratch_url(url: str) -> str:
    """``url`` pointing at the scratch database."""
    return make_url(normalise_url(url)).set(database=PG_DB).render_as_string(hide_password=False)


def fresh_postgres(url: str) -> str:
    """Drop and create the scratch database; its URL."""
    if PG_DB == "test":  # never the shared test database
        raise SystemExit("refusing to use the test database")
    with pg_admin(url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{PG_DB}"')
    return pg_scratch_url(url)


def fresh_sqlite(path: Path) -> str:
    """Remove the SQLite file (and its WAL) at ``path``; its URL."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def count(engine: Engine, table: Table) -> int:
    """Rows in ``table``."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def analyze(engine: Engine) -> None:
    """Refresh the planner's statistics (autovacuum / a periodic ANALYZE would do it in production)."""
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))


def build(engine: Engine, url: str, n_usage: int, n_probe: int, now: datetime, months: int) -> None:
    """Fill the raw tables, then build the rollups from empty; prints rates and times."""
    span = months * 30.44 * 86_400
    start = now.timestamp() - span
    upgrade(url)
    for name, table, chunks in (
        ("usage_events", cast(Table, UsageEventRow.__table__), usage_chunks(n_usage, start, span)),
        ("probe_results", cast(Table, ProbeResultRow.__table__), probe_chunks(n_probe, start, span)),
    ):
        t0 = time.perf_counter()
        gen_s = 0.0
        done = 0
        g0 = time.perf_counter()
        for rows in chunks:
            gen_s += time.perf_counter() - g0
            insert_rows(engine, table, rows)
            done += len(rows)
            g0 = time.perf_counter()
            if done % 1_000_000 < CHUNK:
                elapsed = time.perf_counter() - t0
                print(f"  {name}: {done:,} rows, {elapsed:.0f} s", flush=True)
        elapsed = time.perf_counter() - t0
        print(
            f"  {name}: {done:,} rows in {elapsed:.1f} s = {done / elapsed:,.0f} rows/s "
            f"(of which generating row dicts: {gen_s:.1f} s; insert only: {done / (elapsed - gen_s):,.0f} rows/s)",
            flush=True,
        )
    t0 = time.perf_counter()
    analyze(engine)
    print(f"  ANALYZE: {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    report = refresh_rollups(engine, now=now, wait=True)
    first = time.perf_counter() - t0
    hours = sum(d.recomputed_hours for d in report.datasets)
    print(f"  refresh_rollups from empty: {first:.1f} s ({hours:,} hours recomputed)", flush=True)
    t0 = time.perf_counter()
    refresh_rollups(engine, now=now + timedelta(minutes=1), wait=True)
    print(f"  refresh_rollups again (nothing new): {time.perf_counter() - t0:.2f} s", flush=True)
    # As a daemon is 10 minutes after its first start: the ids seen are settled (see monitor.rollup), so readers
    # that check which hours are current (quota_statuses) no longer count raw rows for the first catch-up.
    t0 = time.perf_counter()
    refresh_rollups(engine, now=now + DEFAULT_OVERLAP + timedelta(minutes=1), wait=True)
    print(f"  refresh_rollups once settled: {time.perf_counter() - t0:.2f} s", flush=True)
    analyze(engine)


# --- timing ---------------------------------------------------------------------------------------------


def quota_settings() -> Settings:
    """The demo's plans plus a prepaid balance, as a dashboard user might configure them."""
    prepaid = {
        "kind": "prepaid",
        "name": "bigmodel-balance",
        "provider": "bigmodel",
        "balance": 2000,
        "currency": "CNY",
        "as_of": "2026-01-01",
    }
    return settings_from_dict({"plans": [*DEMO_PLANS, prepaid]})


Call = Callable[[Any], object]
RANGES: tuple[tuple[str, timedelta], ...] = (
    ("24h", timedelta(hours=24)),
    ("7d", timedelta(days=7)),
    ("30d", timedelta(days=30)),
    ("6mo", timedelta(days=184)),
)


def ranged(label: str, f: Filters, gran: Granularity) -> list[tuple[str, str, Call, bool]]:
    """The calls of the latency, throttling and costs pages over ``f`` (granularity as the page's "auto")."""
    return [
        (f"latency_percentiles {gran}", label, lambda db: latency_percentiles(db, f, granularity=gran), True),
        # The dashboard reads the profile over the last 28 days of the range and the peak ratios over its last 7.
        (
            "latency_profile ttft (last 28d)",
            label,
            lambda db: latency_profile(db, f.tail(PROFILE_SPAN), zone="Asia/Shanghai"),
            True,
        ),
        (
            "peak_slowdown ttft (last 7d)",
            label,
            lambda db: peak_slowdown(db, f.tail(PEAK_SPAN), window=PeakWindow()),
            True,
        ),
        ("compare_providers", label, lambda db: compare_providers(db, f), True),
        (f"throttle_rates probe {gran}", label, lambda db: throttle_rates(db, f, granularity=gran), True),
        (
            f"throttle_rates real {gran}",
            label,
            lambda db: throttle_rates(db, f, traffic="real", granularity=gran),
            True,
        ),
        ("outcome_breakdown probe", label, lambda db: outcome_breakdown(db, f, granularity=None), True),
        ("outcome_breakdown real", label, lambda db: outcome_breakdown(db, f, traffic="real", granularity=None), True),
        ("costs total", label, lambda db: costs(db, f, period="total", by=()), True),
        ("costs day x provider", label, lambda db: costs(db, f, period="day", by=("provider",)), True),
        (
            "costs day x provider,model,app",
            label,
            lambda db: costs(db, f, period="day", by=("provider", "model", "app")),
            True,
        ),
    ]


def calls(now: datetime, settings: Settings) -> list[tuple[str, str, Call, bool]]:
    """(name, range, fn(db), reads rollups only) for each call the dashboard makes, with its usual arguments."""
    out: list[tuple[str, str, Call, bool]] = []
    out.append(("dimensions (the filter lists)", "all", dimensions, True))
    out.append(("health", "1h", lambda db: health(db, now=now), True))
    out.append(("spend_forecast JPY", "month", lambda db: spend_forecast(db, now=now, currency="JPY"), True))
    out.append(("quota_statuses (4 plans)", "plans", lambda db: quota_statuses(db, settings, now=now), False))
    for label, span in RANGES:
        out += ranged(label, Filters.last(span, now=now), "hour" if span <= timedelta(hours=48) else "day")
    return out


@dataclass
class Stat:
    """Times (ms) of one call."""

    ms: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.ms) if self.ms else math.nan

    @property
    def p95(self) -> float:
        if not self.ms:
            return math.nan
        ordered = sorted(self.ms)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest rank


def time_calls(db: Any, todo: Sequence[tuple[str, str, Call, bool]], repeat: int) -> dict[tuple[str, str], Stat]:
    """Each call once to warm up, then ``repeat`` times; wall-clock ms per call."""
    out: dict[tuple[str, str], Stat] = {}
    for name, label, fn, _ in todo:
        fn(db)
        stat = Stat()
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn(db)
            stat.ms.append((time.perf_counter() - t0) * 1000)
        out[(name, label)] = stat
    return out


def as_of(engine: Engine) -> datetime:
    """The data's "now": half an hour into the newest rolled-up probe hour (so a --reuse run sees the same)."""
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(cast(Table, ProbeHourlyRow.__table__).c.hour))).scalar_one()
    if newest is None:
        raise SystemExit("no rollups in the database: build it first (drop --reuse)")
    if isinstance(newest, str):
        newest = datetime.fromisoformat(newest)
    newest = newest if newest.tzinfo else newest.replace(tzinfo=UTC)
    return floor_hour(newest) + timedelta(minutes=30)


ROLLUPS = (
    "rollup_usage_hourly",
    "rollup_outcome_hourly",
    "rollup_probe_hourly",
    "rollup_usage_daily",
    "rollup_outcome_daily",
    "rollup_probe_daily",
)
RAW_COUNT = "SELECT (SELECT count(*) FROM usage_events) + (SELECT count(*) FROM probe_results)"


def empty_raw(conn: Connection) -> None:
    """Empty both raw tables inside ``conn``'s open transaction (the caller rolls it back)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("TRUNCATE usage_events, probe_results"))
    else:
        conn.execute(text("DELETE FROM usage_events"))
        conn.execute(text("DELETE FROM probe_results"))


def bench(engine: Engine, repeat: int, raw_repeat: int) -> dict[str, Any]:
    """Time every call (engine, as the dashboard does), then on one connection with raw rows and without."""
    now = as_of(engine)
    todo = calls(now, quota_settings())
    raw_rows = sum(count(engine, cast(Table, m.__table__)) for m in (UsageEventRow, ProbeResultRow))
    with engine.connect() as conn:
        sizes = {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in ROLLUPS}
    print(f"  as of {now.isoformat()}, {raw_rows:,} raw rows; rollup rows: {sizes}", flush=True)
    print(f"  {len(todo)} calls x {repeat}", flush=True)
    t0 = time.perf_counter()
    main = time_calls(engine, todo, repeat)
    print(f"  timed in {time.perf_counter() - t0:.0f} s", flush=True)
    rollup_only = [c for c in todo if c[3]]
    with engine.connect() as conn:
        with_raw = time_calls(conn, rollup_only, raw_repeat)
        conn.rollback()
        conn.begin()
        t0 = time.perf_counter()
        empty_raw(conn)
        left = int(conn.execute(text(RAW_COUNT)).scalar_one())
        took = time.perf_counter() - t0
        print(f"  raw tables emptied in the transaction ({took:.1f} s; {left} rows left)", flush=True)
        without_raw = time_calls(conn, rollup_only, raw_repeat)
        conn.rollback()
    return {"now": now, "raw_rows": raw_rows, "main": main, "with_raw": with_raw, "without_raw": without_raw}


def print_results(backend: str, res: dict[str, Any], repeat: int, raw_repeat: int) -> None:
    """The per-call table of one backend."""
    main: dict[tuple[str, str], Stat] = res["main"]
    w, wo = res["with_raw"], res["without_raw"]
    print(f"\n## {backend}: {res['raw_rows']:,} raw rows, as of {res['now'].isoformat()}")
    print(
        f"p50/p95 over {repeat} runs via the engine; last two columns: p50 on one connection ({raw_repeat} runs) "
        "with the raw tables as they are / emptied\n"
    )
    print(f"| {'call':<34} | {'range':<5} | {'p50 ms':>7} | {'p95 ms':>7} | {'raw: p50':>8} | {'no raw: p50':>11} |")
    print(f"|{'-' * 36}|{'-' * 7}|{'-' * 9}:|{'-' * 9}:|{'-' * 10}:|{'-' * 13}:|")
    worst = 0.0
    for key, stat in main.items():
        worst = max(worst, stat.p95)
        flag = " !" if stat.p95 > GOAL_MS else ""
        a = f"{w[key].p50:.1f}" if key in w else "(reads raw)"
        b = f"{wo[key].p50:.1f}" if key in wo else "-"
        print(f"| {key[0]:<34} | {key[1]:<5} | {stat.p50:7.1f} | {stat.p95:7.1f}{flag} | {a:>8} | {b:>11} |")
    print(f"\nslowest p95: {worst:.1f} ms (goal <= {GOAL_MS:.0f} ms)", flush=True)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}"


def run_backend(backend: str, url: str, args: argparse.Namespace, build_now: datetime) -> dict[str, Any]:
    print(f"\n# {backend}", flush=True)
    engine = make_engine(url)
    try:
        if not args.reuse:
            build(engine, url, args.usage_events, args.probe_results, build_now, args.months)
        else:  # an older build: bring its schema and rollups (daily ones included) up to date first
            upgrade(url)
            t0 = time.perf_counter()
            for _ in range(2):  # the second settles the ids the first saw (the build is more than 10 minutes old)
                refresh_rollups(engine, wait=True)
            print(f"  refresh_rollups: {time.perf_counter() - t0:.1f} s", flush=True)
        res = bench(engine, args.repeat, args.raw_repeat)
    finally:
        engine.dispose()
    print_results(backend, res, args.repeat, args.raw_repeat)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--usage-events", type=int, default=10_000_000)
    p.add_argument("--probe-results", type=int, default=1_000_000)
    p.add_argument("--months", type=int, default=6)
    p.add_argument("--sqlite", type=Path, default=DEFAULT_DIR / "analytics.db", help="SQLite file to build")
    p.add_argument("--postgres-url", default=DEFAULT_PG, help="server for the scratch database " + PG_DB)
    p.add_argument("--skip-sqlite", action="store_true")
    p.add_argument("--skip-postgres", action="store_true")
    p.add_argument("--reuse", action="store_true", help="time an already built database (no rebuild)")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per call")
    p.add_argument("--raw-repeat", type=int, default=5, help="runs per call for the with/without raw rows check")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}")
    build_now = datetime.now(UTC)
    results: dict[str, dict[str, Any]] = {}
    if not args.skip_sqlite:
        if not args.reuse:
            fresh_sqlite(args.sqlite)
        results["sqlite"] = run_backend("SQLite", f"sqlite:///{args.sqlite}", args, build_now)
    if not args.skip_postgres:
        url = pg_scratch_url(args.postgres_url) if args.reuse else fresh_postgres(args.postgres_url)
        results["postgres"] = run_backend("Postgres", url, args, build_now)
    if args.json:
        payload = {
            backend: {
                "raw_rows": r["raw_rows"],
                "calls": [
                    {"call": k[0], "range": k[1], "p50_ms": s.p50, "p95_ms": s.p95} for k, s in r["main"].items()
                ],
            }
            for backend, r in results.items()
        }
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
