"""Turns the config into scheduled probe targets and builds the APScheduler jobs that run them.

Jobs are thin wrappers: each calls ``Daemon.probe_once`` for its target. Every target gets one interval job
(with jitter; coalesced; at most one instance; an explicit misfire grace time). Its interval is the configured
one, lengthened when the plan's quota budget requires (see ``monitor.budget``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor.budget import BudgetedInterval, budget_interval
from monitor.config import Settings
from monitor.probe import Target


@dataclass(frozen=True, slots=True)
class ScheduledTarget:
    """A target with its interval (after the budget), deadline and the concurrency group it belongs to."""

    target: Target
    interval: BudgetedInterval
    deadline_s: float
    jitter_s: float
    misfire_grace_s: float

    @property
    def job_id(self) -> str:
        """Stable APScheduler job id."""
        return f"probe:{self.target.provider.id}:{self.target.model}"


def resolve_targets(settings: Settings, environ: Mapping[str, str] | None = None) -> list[ScheduledTarget]:
    """The config's targets, with keys from the environment and budgeted intervals."""
    env = os.environ if environ is None else environ
    catalog = settings.catalog()
    per_plan = Counter(t.plan for t in settings.targets if t.plan)
    out = []
    for t in settings.targets:
        provider = catalog[t.provider]
        plan = settings.plan(t.plan) if t.plan else None
        configured = t.interval or settings.prober.interval
        target = Target(
            provider=provider,
            model=t.model,
            vantage=settings.vantage,
            api_key=settings.api_key(provider.id, env),
            max_tokens=t.max_tokens or settings.prober.max_tokens,
            prompt=settings.prober.prompt,
        )
        out.append(
            ScheduledTarget(
                target=target,
                interval=budget_interval(
                    configured, plan, settings.prober.probe_share, per_plan[t.plan] if t.plan else 1
                ),
                deadline_s=t.deadline or settings.prober.deadline,
                jitter_s=min(settings.prober.jitter, configured / 2),
                misfire_grace_s=settings.prober.misfire_grace,
            )
        )
    return out


def concurrency_of(settings: Settings, provider_id: str) -> int:
    """How many probes may be in flight at once for a provider."""
    if provider_id.startswith("custom:"):
        custom = settings.custom.get(provider_id.removeprefix("custom:"))
        if custom and custom.max_concurrency:
            return custom.max_concurrency
    builtin = settings.providers.get(provider_id)
    if builtin and builtin.max_concurrency:
        return builtin.max_concurrency
    return settings.prober.default_concurrency


def add_probe_jobs(
    scheduler: AsyncIOScheduler,
    targets: list[ScheduledTarget],
    job: Callable[[ScheduledTarget], Awaitable[None]],
    *,
    first_runs: Mapping[str, datetime] | None = None,
    now: datetime | None = None,
) -> None:
    """One interval job per target. ``first_runs`` (job id -> time) delays a target's first run, e.g. until
    its interval has passed since its last stored probe, so restarts do not break the budget."""
    start = now or datetime.now(UTC)
    spread = min(5.0, max(len(targets), 1) * 0.05)
    for i, st in enumerate(targets):
        # Stagger the first runs over a few seconds so a restart does not fire every target at once.
        first = start + timedelta(seconds=spread * i / max(len(targets), 1))
        if first_runs and st.job_id in first_runs:
            first = max(first, first_runs[st.job_id])
        scheduler.add_job(
            job,
            IntervalTrigger(seconds=st.interval.seconds, jitter=st.jitter_s or None, timezone=UTC),
            args=[st],
            id=st.job_id,
            name=st.target.name,
            next_run_time=first,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, int(st.misfire_grace_s)),
            replace_existing=True,
        )
