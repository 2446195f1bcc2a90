"""The prober daemon: probes every target on its schedule and stores what it measures.

Housekeeping jobs run beside the probes: rollups at start and every minute, raw-row pruning daily, the Coding
Plan quota poller every 5 minutes for plans that poll, and the daily FX feed when enabled.

``Daemon.run`` migrates nothing and opens nothing on its own; the CLI hands it settings, an engine and a
writer. It stops cleanly on ``stop`` (SIGTERM/SIGINT in ``glm-monitor run``): no new probes start, probes in
flight end by their deadline, the writer flushes.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from monitor.config import CodingPlan, Settings
from monitor.errors import MonitorError
from monitor.events import ProbeResult
from monitor.fx import fetch_daily
from monitor.logfmt import kv
from monitor.models import ProbeResultRow
from monitor.probe import run_probe, usage_event_of
from monitor.quota_poller import DEFAULT_POLL_INTERVAL_S, poll_quota_async
from monitor.rollup import prune_raw, refresh_rollups
from monitor.rollup_days import DEFAULT_DAY_ZONES
from monitor.scheduler import ScheduledTarget, add_probe_jobs, concurrency_of, resolve_targets
from monitor.writer import EventWriter

log = logging.getLogger("monitor.daemon")


class _MinuteStats:
    """What happened since the last summary line."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.lags_ms: list[float] = []

    def summary(self) -> dict[str, Any]:
        lags = sorted(self.lags_ms)
        out: dict[str, Any] = {"probes": sum(self.outcomes.values())}
        out.update({k: v for k, v in sorted(self.outcomes.items())})
        if lags:
            out["lag_p50_ms"] = statistics.median(lags)
            out["lag_p99_ms"] = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
            out["lag_max_ms"] = lags[-1]
        return out


FIRST_ROLLUP_AFTER_S = 8.0
"""When the daemon rolls up for the second time after its start (the first probes are stored by then)."""


class Daemon:
    """Schedules one probe job per target, limits concurrency per provider, writes results and summaries."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        writer: EventWriter,
        *,
        environ: Mapping[str, str] | None = None,
        targets: list[ScheduledTarget] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.writer = writer
        self.targets = targets if targets is not None else resolve_targets(settings, environ)
        self.catalog = settings.price_catalog()
        self._stats = _MinuteStats()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._clients: dict[str, httpx.AsyncClient] = {}
        self.probes_done = 0

    def _client(self, provider_id: str) -> httpx.AsyncClient:
        client = self._clients.get(provider_id)
        if client is None:
            n = concurrency_of(self.settings, provider_id)
            # A small pool per provider: one large shared pool is slow in httpx 0.28 (see DESIGN.md).
            client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
                timeout=httpx.Timeout(self.settings.prober.deadline),
                verify=_SSL_CONTEXT,
            )
            self._clients[provider_id] = client
        return client

    def _semaphore(self, provider_id: str) -> asyncio.Semaphore:
        sem = self._semaphores.get(provider_id)
        if sem is None:
            sem = self._semaphores[provider_id] = asyncio.Semaphore(concurrency_of(self.settings, provider_id))
        return sem

    async def probe_once(self, st: ScheduledTarget) -> ProbeResult:
        """Probe one target now (waiting for its provider's concurrency slot), store and log the result."""
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            async with self._semaphore(st.target.provider.id):
                result = await run_probe(
                    st.target, self._client(st.target.provider.id), deadline=st.deadline_s, catalog=self.catalog
                )
            self.writer.submit(result)
            self.writer.submit(usage_event_of(result))
            self.probes_done += 1
            self._stats.outcomes[str(result.outcome)] += 1
            log.debug(
                kv(
                    "probe",
                    target=st.target.name,
                    vantage=result.vantage,
                    outcome=result.outcome,
                    status=result.http_status,
                    code=result.error_code,
                    ttft_ms=result.ttft_ms,
                    total_ms=result.total_ms,
                    tps=result.tokens_per_s,
                    out_tokens=result.usage.output_tokens,
                    cost=result.cost,
                )
            )
            return result
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _job(self, st: ScheduledTarget) -> None:
        await self.probe_once(st)

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        if event.job_id.startswith("probe:") and event.scheduled_run_times:
            lag = (datetime.now(UTC) - event.scheduled_run_times[-1]).total_seconds() * 1000.0
            self._stats.lags_ms.append(max(lag, 0.0))

    def _summary(self) -> None:
        stats, self._stats = self._stats, _MinuteStats()
        log.info(kv("summary", targets=len(self.targets), **stats.summary()))

    def _add_housekeeping(self, scheduler: AsyncIOScheduler) -> None:
        """Summary line, rollups (now and every minute), daily pruning, quota polling, daily FX rates."""
        common: dict[str, Any] = {"coalesce": True, "max_instances": 1, "misfire_grace_time": 60}
        now = datetime.now(UTC)
        scheduler.add_job(self._summary, "interval", seconds=60, id="housekeeping:summary", **common)
        scheduler.add_job(
            self._refresh_rollups, "interval", seconds=60, id="housekeeping:rollups", next_run_time=now, **common
        )
        # Once more soon after start, when the first probes are stored: status and the dashboard read rollups,
        # and a newcomer should not wait a minute to see the targets they just started.
        scheduler.add_job(
            self._refresh_rollups,
            "date",
            run_date=now + timedelta(seconds=FIRST_ROLLUP_AFTER_S),
            id="housekeeping:rollups-first",
            **common,
        )
        scheduler.add_job(
            self._prune,
            "interval",
            hours=24,
            id="housekeeping:prune",
            next_run_time=now + timedelta(minutes=5),
            **common,
        )
        for plan in self.settings.plans:
            if isinstance(plan, CodingPlan) and plan.poll_quota:
                scheduler.add_job(
                    self._poll_quota,
                    "interval",
                    seconds=DEFAULT_POLL_INTERVAL_S,
                    args=[plan],
                    id=f"housekeeping:quota:{plan.name}",
                    next_run_time=now,
                    **common,
                )
        if self.settings.fx.fetch_daily:
            scheduler.add_job(self._fetch_fx, "interval", hours=24, id="housekeeping:fx", next_run_time=now, **common)

    def _day_zones(self) -> tuple[str, ...]:
        """Zones whose daily rollups are kept: the defaults and the display zone the dashboard reads days in."""
        return tuple(dict.fromkeys((*DEFAULT_DAY_ZONES, self.settings.timezone)))

    async def _refresh_rollups(self) -> None:
        try:
            report = await asyncio.to_thread(refresh_rollups, self.engine, day_zones=self._day_zones())
        except SQLAlchemyError as exc:
            log.warning(kv("rollups_failed", error=type(exc).__name__))
            return
        if report.recomputed_hours:
            log.debug(kv("rollups", hours=report.recomputed_hours, seconds=report.duration_s))

    async def _prune(self) -> None:
        try:
            report = await asyncio.to_thread(
                prune_raw, self.engine, self.settings.database.retention_days, day_zones=self._day_zones()
            )
        except SQLAlchemyError as exc:
            log.warning(kv("prune_failed", error=type(exc).__name__))
            return
        log.info(kv("pruned", retention_days=self.settings.database.retention_days, report=report))

    async def _poll_quota(self, plan: CodingPlan) -> None:
        try:
            async with httpx.AsyncClient(verify=_SSL_CONTEXT, timeout=20) as client:
                result = await poll_quota_async(self.engine, self.settings, plan, client)
        except SQLAlchemyError as exc:
            log.warning(kv("quota_poll_failed", plan=plan.name, error=type(exc).__name__))
            return
        log.info(kv("quota_poll", plan=plan.name, status=result.status))

    async def _fetch_fx(self) -> None:
        try:
            day, rates = await asyncio.to_thread(fetch_daily, self.engine, self.settings.fx.feed_url)
        except (MonitorError, SQLAlchemyError) as exc:
            log.warning(kv("fx_fetch_failed", error=str(exc)))
            return
        log.info(kv("fx_fetched", day=day, **{f"{b}JPY": r.quantize(Decimal("0.01")) for b, r in rates.items()}))

    def last_probe_times(self) -> dict[str, datetime]:
        """Per job id, when the target was last probed from this vantage (for the budget across restarts)."""
        q = (
            select(ProbeResultRow.provider, ProbeResultRow.model, func.max(ProbeResultRow.ts))
            .where(ProbeResultRow.vantage == self.settings.vantage)
            .group_by(ProbeResultRow.provider, ProbeResultRow.model)
        )
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(q).all()
        except SQLAlchemyError as exc:  # the database is away (or not migrated yet): probes are spooled meanwhile
            log.warning(kv("last_probes_unknown", error=type(exc).__name__))
            return {}
        return {f"probe:{p}:{m}": ts for p, m, ts in rows if ts is not None}

    def describe_schedule(self) -> list[str]:
        """One line per target: what is probed how often, and why an interval was lengthened."""
        lines = []
        for st in self.targets:
            line = f"{st.target.name} every {st.interval.seconds:g}s (deadline {st.deadline_s:g}s)"
            if st.interval.reason:
                line += f": {st.interval.reason}"
            lines.append(line)
        return lines

    async def run(self, stop: asyncio.Event) -> None:
        """Probe on schedule until ``stop`` is set, then wind down: in-flight probes finish, the writer flushes."""
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)
        last = self.last_probe_times()
        first_runs = {
            st.job_id: last[st.job_id] + timedelta(seconds=st.interval.seconds)
            for st in self.targets
            if st.job_id in last and st.interval.lengthened
        }
        add_probe_jobs(scheduler, self.targets, self._job, first_runs=first_runs)
        self._add_housekeeping(scheduler)
        scheduler.start()
        log.info(kv("started", targets=len(self.targets), vantage=self.settings.vantage))
        try:
            await stop.wait()
        finally:
            scheduler.shutdown(wait=False)
            started = time.monotonic()
            if self._inflight:
                log.info(kv("stopping", in_flight=len(self._inflight)))
                await asyncio.gather(*list(self._inflight), return_exceptions=True)
            for client in self._clients.values():
                await client.aclose()
            # Leave the rollups current, so the dashboard shows every probe of this run.
            await asyncio.to_thread(self.writer.flush, 30.0)
            await self._refresh_rollups()
            self._summary()
            log.info(kv("stopped", probes=self.probes_done, wind_down_s=time.monotonic() - started))


def _ssl_context() -> Any:
    # One SSL context for every client: each httpx client would otherwise load its own CA bundle (~0.8 MB).
    import ssl

    import certifi

    return ssl.create_default_context(cafile=certifi.where())


_SSL_CONTEXT = _ssl_context()
