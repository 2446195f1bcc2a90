"""The simulator's mutable state: its clock, per-model counters and limits, the Coding Plan windows.

Every mutation happens on the server's event loop; a lock guards the few fields that other threads read
(:meth:`SimState.stats`) or reset.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from monitor.sim.profiles import FAILURE_KINDS, IN_FLIGHT_KINDS, CodingPlan, ModelProfile, SimConfig

__all__ = ["CST", "Admission", "SimClock", "SimState", "parse_sim_time"]

CST = ZoneInfo("Asia/Shanghai")
_MINUTE = 60.0
_FIVE_HOURS = 5 * 3600.0
_WEEK = 7 * 86400.0


def parse_sim_time(value: str) -> datetime:
    """Parse an ``X-Sim-Time`` / clock value: ISO 8601; a time without an offset is Beijing time.

    Raises ValueError for anything else.
    """
    dt = datetime.fromisoformat(value.strip())
    return dt.replace(tzinfo=CST) if dt.tzinfo is None else dt


class SimClock:
    """The simulator's "now": real time plus an offset, or a frozen instant."""

    def __init__(self, offset_s: float = 0.0, fixed: datetime | None = None) -> None:
        self._initial = (offset_s, fixed)
        self.offset_s = offset_s
        self.fixed = fixed

    def now(self) -> datetime:
        """The current simulated time, UTC-aware."""
        if self.fixed is not None:
            return self.fixed.astimezone(UTC)
        return datetime.fromtimestamp(time.time() + self.offset_s, UTC)

    def set_now(self, when: datetime, *, frozen: bool = False) -> None:
        """Make ``now()`` return ``when``: frozen there, or running on from it."""
        if frozen:
            self.fixed = when
        else:
            self.fixed = None
            self.offset_s = when.timestamp() - time.time()

    def set_offset(self, offset_s: float) -> None:
        """Run ``offset_s`` seconds ahead of (negative: behind) real time."""
        self.fixed, self.offset_s = None, offset_s

    def reset(self) -> None:
        """Back to the configured offset / fixed time."""
        self.offset_s, self.fixed = self._initial

    def describe(self) -> dict[str, Any]:
        """JSON-ready view for ``GET /_sim/clock``."""
        return {
            "now": self.now().astimezone(CST).isoformat(),
            "offset_s": None if self.fixed is not None else self.offset_s,
            "frozen": self.fixed is not None,
        }


@dataclass(frozen=True)
class Admission:
    """The verdict on one request: its outcome kind, number (per model, from 1) and random generator."""

    kind: str
    number: int
    rng: random.Random
    peak: bool
    in_flight: bool
    reset_at: datetime | None = None  # when a 1308 window ends

    @property
    def immediate(self) -> bool:
        """True when the answer is an error sent at once (no stream, no concurrency slot)."""
        return not self.in_flight


@dataclass
class _ModelCounters:
    requests: int = 0
    in_flight: int = 0
    times: list[float] = field(default_factory=list)  # admitted requests, simulated epoch s, sorted
    per_day: dict[str, int] = field(default_factory=dict)  # Beijing date -> admitted requests
    outcomes: Counter[str] = field(default_factory=Counter)


@dataclass
class _Window:
    length_s: float
    start: float | None = None
    used: float = 0.0

    def roll(self, now: float) -> None:
        if self.start is not None and now >= self.start + self.length_s:
            self.start, self.used = None, 0.0

    def add(self, now: float, amount: float) -> None:
        self.roll(now)
        if self.start is None:
            self.start = now
        self.used += amount


class SimState:
    """Counters, limits and the clock of one simulator instance."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.clock = SimClock(config.clock_offset_s, config.fixed_now)
        self._lock = threading.Lock()
        self._models: dict[str, _ModelCounters] = {}
        self._rejected: Counter[str] = Counter()
        self._five_hour = _Window(_FIVE_HOURS)
        self._weekly = _Window(_WEEK)

    def reset(self) -> None:
        """Forget every counter, window and statistic (requests in flight keep their slots)."""
        with self._lock:
            for name, counters in list(self._models.items()):
                self._models[name] = _ModelCounters(in_flight=counters.in_flight)
            self._rejected.clear()
            self._five_hour = _Window(_FIVE_HOURS)
            self._weekly = _Window(_WEEK)

    def reject(self, reason: str) -> None:
        """Count a request refused before it reached a model (auth, unknown model, bad request)."""
        with self._lock:
            self._rejected[reason] += 1

    def admit(
        self,
        model: str,
        profile: ModelProfile,
        now: datetime,
        *,
        forced: str | None,
        coding: bool,
        tokens: int,
    ) -> Admission:
        """Decide the outcome of a request for ``model`` at simulated time ``now``.

        Order: a forced kind wins; then concurrency (1302), daily (1304) and per-minute (1303) limits, the
        Coding Plan 5-hour cap on coding paths (1308), then the profile's random failures. Requests that
        pass the limits count against them; in-flight kinds take a concurrency slot that the caller must
        give back with :meth:`release`. ``tokens`` is what the request will cost the Coding Plan.
        """
        ts = now.timestamp()
        peak = profile.in_peak(now.astimezone(CST).hour)
        with self._lock:
            counters = self._models.setdefault(model, _ModelCounters())
            counters.requests += 1
            number = counters.requests
            # Seeded by a string, so the stream is the same in every process (str seeds go through SHA-512).
            rng = random.Random(f"{self.config.seed}/{model}/{number}")
            roll = rng.random()
            reset_at: datetime | None = None
            kind = forced
            if kind is None:
                kind = self._limit_kind(counters, profile, ts, now)
            if kind is None and coding:
                kind, reset_at = self._plan_kind(ts)
            if kind is None:
                counters.times.insert(bisect.bisect_right(counters.times, ts), ts)
                if len(counters.times) > 4096:  # only the last minute matters
                    del counters.times[: bisect.bisect_left(counters.times, ts - 2 * _MINUTE)]
                day = now.astimezone(CST).date().isoformat()
                counters.per_day[day] = counters.per_day.get(day, 0) + 1
                kind = _roll_failure(profile, roll, peak)
            if kind == "1308" and reset_at is None:
                # A forced 1308 names the running window's end, else the end of a window starting now.
                window = self._five_hour
                window.roll(ts)
                end = (window.start if window.start is not None else ts) + window.length_s
                reset_at = datetime.fromtimestamp(end, UTC)
            in_flight = kind in IN_FLIGHT_KINDS
            if in_flight:
                counters.in_flight += 1
                if coding:
                    weight = profile.peak_quota_weight if peak else profile.quota_weight
                    self._five_hour.add(ts, tokens * weight)
                    self._weekly.add(ts, tokens * weight)
            counters.outcomes[kind] += 1
        return Admission(kind=kind, number=number, rng=rng, peak=peak, in_flight=in_flight, reset_at=reset_at)

    def _limit_kind(self, counters: _ModelCounters, profile: ModelProfile, ts: float, now: datetime) -> str | None:
        if profile.concurrency is not None and counters.in_flight >= profile.concurrency:
            return "1302"
        if profile.rpd is not None:
            day = now.astimezone(CST).date().isoformat()
            if counters.per_day.get(day, 0) >= profile.rpd:
                return "1304"
        if profile.rpm is not None:
            times = counters.times
            in_minute = bisect.bisect_right(times, ts) - bisect.bisect_right(times, ts - _MINUTE)
            if in_minute >= profile.rpm:
                return "1303"
        return None

    def _plan_kind(self, ts: float) -> tuple[str | None, datetime | None]:
        cap = self.config.coding_plan.five_hour_tokens
        window = self._five_hour
        window.roll(ts)
        if cap is not None and window.start is not None and window.used >= cap:
            return "1308", datetime.fromtimestamp(window.start + window.length_s, UTC)
        return None, None

    def release(self, model: str) -> None:
        """Give back the concurrency slot taken by an in-flight admission."""
        with self._lock:
            counters = self._models.get(model)
            if counters is not None and counters.in_flight > 0:
                counters.in_flight -= 1

    def stats(self) -> dict[str, Any]:
        """JSON-ready snapshot: requests, in-flight count and outcome counts per model; refused requests."""
        with self._lock:
            return {
                "models": {
                    name: {
                        "requests": c.requests,
                        "in_flight": c.in_flight,
                        "outcomes": dict(sorted(c.outcomes.items())),
                    }
                    for name, c in sorted(self._models.items())
                },
                "rejected": dict(sorted(self._rejected.items())),
                "coding_plan": {
                    "five_hour_used": round(self._five_hour.used),
                    "weekly_used": round(self._weekly.used),
                },
            }

    def quota(self, now: datetime) -> dict[str, Any]:
        """The ``data`` object of the Coding Plan quota API, in the shape Z.ai returns."""
        plan: CodingPlan = self.config.coding_plan
        ts = now.timestamp()
        with self._lock:
            five, week = self._five_hour, self._weekly
            five.roll(ts)
            week.roll(ts)
            five_limit: dict[str, Any] = {
                "type": "TOKENS_LIMIT",
                "unit": 3,
                "number": 5,
                "percentage": _percent(five.used, plan.five_hour_tokens),
            }
            if five.start is not None:
                five_limit["nextResetTime"] = _ms(five.start + five.length_s)
            week_end = (week.start if week.start is not None else ts) + week.length_s
        month_end = ts + 30 * 86400.0
        return {
            "limits": [
                five_limit,
                {
                    "type": "TOKENS_LIMIT",
                    "unit": 6,
                    "number": 1,
                    "percentage": _percent(week.used, plan.weekly_tokens),
                    "nextResetTime": _ms(week_end),
                },
                {
                    "type": "TIME_LIMIT",
                    "unit": 5,
                    "number": 1,
                    "usage": plan.monthly_tool_calls,
                    "currentValue": 0,
                    "remaining": plan.monthly_tool_calls,
                    "percentage": 0,
                    "nextResetTime": _ms(month_end),
                    "usageDetails": [
                        {"modelCode": "search-prime", "usage": 0},
                        {"modelCode": "web-reader", "usage": 0},
                        {"modelCode": "zread", "usage": 0},
                    ],
                },
            ],
            "level": plan.level,
        }


def _roll_failure(profile: ModelProfile, roll: float, peak: bool) -> str:
    factor = profile.peak_failure_factor if peak else 1.0
    acc = 0.0
    for kind in FAILURE_KINDS:  # fixed order, so the same roll always maps to the same kind
        acc += profile.failure_rates.get(kind, 0.0) * factor
        if roll < acc:
            return kind
    return "ok"


def _percent(used: float, limit: int | None) -> int:
    if not limit:
        return 0
    return min(100, int(used * 100 // limit))


def _ms(epoch_s: float) -> int:
    return int(epoch_s * 1000)
