"""``glm-monitor status``: provider health, spend and quota burn in one report, with Nagios exit codes.

Exit codes follow the Nagios plugin convention so the command can serve as a check in existing monitoring:
0 OK, 1 WARNING (a target throttled or slow, a quota projected to run out before its reset, spend forecast over
a monthly budget), 2 CRITICAL (a target down, a quota exhausted), 3 UNKNOWN (no data, unreadable config or
database). Every figure comes from ``monitor.analytics`` and ``monitor.quota``, like the dashboard's.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from monitor.analytics import health, peak_slowdown, spend_forecast
from monitor.analytics.costs import SpendForecast
from monitor.analytics.health import TargetHealth
from monitor.config import Settings
from monitor.quota import QuotaStatus, quota_statuses

# A target is "slow" when its median TTFT in the last hour is at least this many times its 7-day off-peak median.
SLOW_FACTOR = 2.0


class State(enum.IntEnum):
    """Nagios plugin states, which are also the exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason for a non-OK state."""

    state: State
    text: str


@dataclass
class StatusReport:
    """Everything ``glm-monitor status`` shows; ``state`` is the worst finding (OK when there are none)."""

    as_of: datetime
    targets: list[TargetHealth]
    baseline_ttft_ms: dict[tuple[str, str], float]
    spend: dict[str, SpendForecast]
    quotas: list[QuotaStatus]
    findings: list[Finding] = field(default_factory=list)

    @property
    def state(self) -> State:
        if not self.targets and not any(f.has_data for f in self.spend.values()) and not self.quotas:
            return State.UNKNOWN
        return max((f.state for f in self.findings), default=State.OK)

    def summary(self) -> str:
        """The Nagios-style first line, e.g. ``GLM MONITOR WARNING - zai/glm-4.7-flash throttled``."""
        state = self.state
        if state == State.UNKNOWN and not self.findings:
            return "GLM MONITOR UNKNOWN - no data yet: start `glm-monitor run` or `glm-monitor demo`"
        worst = [f.text for f in self.findings if f.state == state] or ["all targets healthy, no quota at risk"]
        return f"GLM MONITOR {state.name} - " + "; ".join(worst)


def build_report(engine: Engine, settings: Settings, *, now: datetime | None = None) -> StatusReport:
    """Read health, spend and quotas and judge them (see the module docstring for the states)."""
    at = now or datetime.now(UTC)
    targets = health(engine, now=at)
    slow = peak_slowdown(engine, now=at)
    baseline: dict[tuple[str, str], float] = {}
    for provider, model, median in zip(slow["provider"], slow["model"], slow["offpeak_median"], strict=True):
        if median is not None and not math.isnan(float(median)):
            baseline[(str(provider), str(model))] = float(median)
    spend = {c: spend_forecast(engine, now=at, zone=settings.timezone, currency=c) for c in ("JPY", "USD")}
    quotas = quota_statuses(engine, settings, now=at)
    report = StatusReport(at, targets, baseline, dict(spend), quotas)
    report.findings = _judge(report)
    return report


def _judge(report: StatusReport) -> list[Finding]:
    out: list[Finding] = []
    for t in report.targets:
        name = f"{t.provider}/{t.model}"
        if t.status == "down":
            out.append(Finding(State.CRITICAL, f"{name} down ({t.reason})"))
        elif t.status == "throttled":
            out.append(Finding(State.WARNING, f"{name} throttled ({t.reason})"))
        base = report.baseline_ttft_ms.get((t.provider, t.model))
        if t.median_ttft_ms is not None and base and t.median_ttft_ms >= SLOW_FACTOR * base:
            out.append(
                Finding(State.WARNING, f"{name} slow (median TTFT {t.median_ttft_ms:.0f} ms vs {base:.0f} ms usual)")
            )
    for q in report.quotas:
        label = f"{q.plan} {q.window}"
        if q.share is not None and q.share >= 1:
            out.append(Finding(State.CRITICAL, f"quota {label} exhausted ({_share(q)})"))
        elif q.kind == "monthly_budget" and q.runs_out_before_reset:
            out.append(Finding(State.WARNING, f"spend forecast over budget {q.plan} ({_share(q)} used so far)"))
        elif q.runs_out_before_reset:
            when = q.exhausts_at.isoformat(timespec="minutes") if q.exhausts_at else "soon"
            out.append(Finding(State.WARNING, f"quota {label} projected to run out at {when}, before its reset"))
    return out


def _share(q: QuotaStatus) -> str:
    return "?" if q.share is None else f"{q.share:.0%}"


MONEY_PLACES = Decimal("0.000001")
"""Every amount of money in ``status --json`` is a string with exactly six decimals (exact, and one shape)."""
_MONEY_UNITS = frozenset({"JPY", "USD", "CNY"})


def money_text(amount: Decimal) -> str:
    """``amount`` as a JSON money string: six decimals, never an exponent (``"3152.138307"``)."""
    return f"{amount.quantize(MONEY_PLACES):f}"


def to_json(report: StatusReport) -> dict[str, Any]:
    """A JSON-ready dict of the report, for scripts (``glm-monitor status --json``); money as ``money_text``."""

    def num(v: Any) -> Any:
        if isinstance(v, Decimal):
            return str(v)
        if isinstance(v, datetime):
            return v.isoformat()
        if isinstance(v, float) and math.isnan(v):
            return None
        return v

    def amount(v: Any, unit: str | None) -> Any:
        if isinstance(v, Decimal) and unit in _MONEY_UNITS:
            return money_text(v)
        return num(v)

    return {
        "state": report.state.name,
        "exit_code": int(report.state),
        "summary": report.summary(),
        "as_of": report.as_of.isoformat(),
        "findings": [{"state": f.state.name, "text": f.text} for f in report.findings],
        "targets": [
            {
                "provider": t.provider,
                "model": t.model,
                "status": t.status,
                "reason": t.reason,
                "requests": t.requests,
                "rate_429": t.rate_429,
                "median_ttft_ms": t.median_ttft_ms,
                "usual_ttft_ms": report.baseline_ttft_ms.get((t.provider, t.model)),
                "last_outcome": t.last_outcome,
                "last_error_code": t.last_error_code,
                "last_ts": t.last_ts.isoformat(),
            }
            for t in report.targets
        ],
        "spend": {
            c: {
                "month": f.month.isoformat(),
                "month_to_date": money_text(f.month_to_date),
                "forecast": money_text(f.forecast),
                "method": f.method,
            }
            for c, f in report.spend.items()
        },
        "quotas": [
            {
                "plan": q.plan,
                "kind": q.kind,
                "window": q.window,
                "used": amount(q.used, q.unit),
                "limit": amount(q.limit, q.unit),
                "unit": q.unit,
                "share": q.share,
                "burn_per_hour": amount(q.burn_per_hour, q.unit),
                "exhausts_at": num(q.exhausts_at),
                "resets_at": num(q.resets_at),
                "runs_out_before_reset": q.runs_out_before_reset,
                "source": q.source,
            }
            for q in report.quotas
        ],
    }
