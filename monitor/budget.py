"""The probe budget: probes never use more than a share of any quota of the target's plan.

A plan's request caps (per minute, per 5 hours, per day) are shared by every target probing against it; the
shortest interval that keeps each target's probes within ``share`` of every cap is the budget interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from monitor.config import FreeTierPlan, Plan
from monitor.money import Cost
from monitor.pricing import PriceCatalog
from monitor.usage import Usage

WINDOWS: tuple[tuple[str, float, str], ...] = (
    ("requests_per_minute", 60.0, "minute"),
    ("requests_per_5h", 5 * 3600.0, "5 hours"),
    ("requests_per_day", 86400.0, "day"),
)


@dataclass(frozen=True, slots=True)
class BudgetedInterval:
    """The interval a target is probed at, and why it differs from the configured one (None: it does not)."""

    seconds: float
    configured: float
    reason: str | None = None

    @property
    def lengthened(self) -> bool:
        """True when the plan's quota forced a longer interval than configured."""
        return self.seconds > self.configured


def budget_interval(configured_s: float, plan: Plan | None, share: float, targets_on_plan: int = 1) -> BudgetedInterval:
    """The interval keeping probes within ``share`` of each cap of ``plan``, shared by ``targets_on_plan``.

    E.g. 50 requests/day, share 0.10, one target: at most 5 probes a day, so at least 17,280 s apart.
    """
    if not isinstance(plan, FreeTierPlan):
        return BudgetedInterval(configured_s, configured_s)
    best = configured_s
    reason = None
    for key, window_s, label in WINDOWS:
        limit = getattr(plan, key)
        if not limit:
            continue
        allowed = share * limit / max(targets_on_plan, 1)  # probes per window for this target
        needed = window_s / allowed
        if needed > best:
            best = needed
            shared = f", shared by {targets_on_plan} targets" if targets_on_plan > 1 else ""
            reason = (
                f"plan {plan.name!r} allows {limit} requests per {label}; probes may use {share:.0%} of it"
                f"{shared} ({allowed:g} per {label}), so the interval is {needed:g}s instead of {configured_s:g}s"
            )
    return BudgetedInterval(best, configured_s, reason)


# A probe's typical size: the probe prompt with its chat template, and max_tokens of output (thinking off).
PROBE_INPUT_TOKENS = 20
MONTH_S = 30 * 86400.0


def monthly_probe_cost(
    catalog: PriceCatalog, provider: str, model: str, interval_s: float, max_tokens: int, *, at: datetime
) -> tuple[int, Cost | None]:
    """Probes a target makes in 30 days at ``interval_s`` and what they cost at most (None: no known price)."""
    probes = int(MONTH_S // interval_s)
    usage = Usage(input_tokens=PROBE_INPUT_TOKENS, cached_input_tokens=0, output_tokens=max_tokens)
    one = catalog.price(provider, model, usage, at)
    return probes, None if one is None else Cost(one.amount * probes, one.currency)
