"""What the simulated provider simulates: one :class:`ModelProfile` per model, and the :class:`SimConfig`.

A profile fixes a model's timing (time to first token, time per output token, peak-hour slowdown), the token
counts it reports, how often it fails and how, and its rate limits. Everything random is drawn from a
per-request ``random.Random`` seeded by ``(SimConfig.seed, model, request number)``, so a sequence of requests
to one model gets the same outcomes in every run.

Failure kinds (``ModelProfile.failure_rates`` keys and the ``X-Sim-Fail`` request header):

==================================  ===================================================================
``1302`` ``1303`` ``1304`` ``1305``  Zhipu business error (concurrency / frequency / daily cap / overloaded)
``1113`` ``1301`` ``1308``           arrears / unsafe input (HTTP 400) / Coding Plan 5-hour cap
``auth``                             the dialect's authentication failure (Zhipu 1000, HTTP 401)
``500``                              HTTP 500 with the dialect's error body
``502``                              HTTP 502 with nginx's HTML page (every dialect)
``429-anthropic-rate_limit_error``   anthropic ``rate_limit_error`` (other dialects: their rate-limit error)
``529``                              anthropic ``overloaded_error`` (other dialects: their overload error)
``stall``                            nothing is sent for ``SimConfig.stall_s`` seconds, then a normal answer
``cut``                              the stream ends cleanly after some tokens: no usage, no ``[DONE]``
                                     (non-stream: the connection closes in the middle of the body)
``reset``                            the connection is closed in the middle of the stream (an incomplete
                                     chunked body, which clients report as a protocol error)
``sensitive``                        the content filter stops the answer: Zhipu ``finish_reason
                                     "sensitive"``, anthropic ``stop_reason "refusal"``, DashScope
                                     ``DataInspectionFailed``
==================================  ===================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "FAILURE_KINDS",
    "IN_FLIGHT_KINDS",
    "CodingPlan",
    "ModelProfile",
    "SimConfig",
    "default_profiles",
    "demo_config",
    "estimate_prompt_tokens",
]

FAILURE_KINDS: tuple[str, ...] = (
    "1302",
    "1303",
    "1304",
    "1305",
    "1113",
    "1301",
    "1308",
    "auth",
    "500",
    "502",
    "429-anthropic-rate_limit_error",
    "529",
    "stall",
    "cut",
    "reset",
    "sensitive",
)
# Kinds that answer with HTTP 200 and occupy a concurrency slot while they run; the others answer at once.
IN_FLIGHT_KINDS: frozenset[str] = frozenset({"ok", "stall", "cut", "reset", "sensitive"})

# Prompt size when a profile does not fix it: a small per-request overhead plus ~3 characters per token.
PROMPT_OVERHEAD_TOKENS = 4
CHARS_PER_TOKEN = 3


def estimate_prompt_tokens(text_chars: int) -> int:
    """Prompt tokens the simulator reports for a request whose messages hold ``text_chars`` characters."""
    return PROMPT_OVERHEAD_TOKENS + math.ceil(max(0, text_chars) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class ModelProfile:
    """How one simulated model behaves.

    Timing: the first token comes ``ttft_s`` after the request, then one token every ``token_s``; both are
    multiplied by ``peak_factor`` when the simulator's clock, read in Asia/Shanghai, is in ``peak_hours``.
    ``ttft_jitter`` is the sigma of a log-normal factor on the TTFT (0: exact). Usage: the answer has
    ``min(max_tokens, output_tokens)`` tokens, of which ``floor(n * reasoning_share)`` are reasoning when
    thinking is on; the prompt has ``prompt_tokens`` tokens (None: estimated from the message text), of
    which ``floor(prompt * cached_share)`` are cached. ``failure_rates`` maps failure kinds to probabilities
    (multiplied by ``peak_failure_factor`` in peak hours). Limits: at most ``concurrency`` requests in
    flight (else 1302), ``rpm`` per minute (else 1303) and ``rpd`` per Beijing calendar day (else 1304).
    ``quota_weight`` (``peak_quota_weight`` in peak hours) multiplies the tokens counted against the
    Coding Plan windows.
    """

    ttft_s: float = 0.3
    token_s: float = 1 / 60
    ttft_jitter: float = 0.0
    peak_hours: frozenset[int] = frozenset({15, 16, 17})
    peak_factor: float = 3.0
    peak_failure_factor: float = 1.0
    output_tokens: int = 64
    prompt_tokens: int | None = None
    cached_share: float = 0.0
    reasoning_share: float = 0.0
    thinking_default: bool = True
    failure_rates: Mapping[str, float] = field(default_factory=dict)
    concurrency: int | None = None
    rpm: int | None = None
    rpd: int | None = None
    quota_weight: float = 1.0
    peak_quota_weight: float = 1.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.failure_rates) - set(FAILURE_KINDS))
        if unknown:
            raise ValueError(f"unknown failure kinds {unknown}; known: {', '.join(FAILURE_KINDS)}")
        if any(p < 0 for p in self.failure_rates.values()) or sum(self.failure_rates.values()) > 1:
            raise ValueError("failure_rates must be >= 0 and sum to at most 1")
        if self.ttft_s < 0 or self.token_s < 0 or self.output_tokens < 1:
            raise ValueError("ttft_s and token_s must be >= 0 and output_tokens >= 1")
        if not (0 <= self.cached_share <= 1 and 0 <= self.reasoning_share <= 1):
            raise ValueError("cached_share and reasoning_share must be within [0, 1]")
        if any(not 0 <= h <= 23 for h in self.peak_hours):
            raise ValueError("peak_hours are hours of the day, 0..23")
        for name in ("concurrency", "rpm", "rpd"):
            limit = getattr(self, name)
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be >= 1 or None")

    def in_peak(self, hour_cst: int) -> bool:
        """True when ``hour_cst`` (hour of the day in Asia/Shanghai) is one of this model's peak hours."""
        return hour_cst in self.peak_hours


@dataclass(frozen=True)
class CodingPlan:
    """The simulated GLM Coding Plan behind ``/api/coding/paas/v4``, ``/api/anthropic`` and the quota API.

    Requests on the coding paths count ``(prompt + output tokens) * quota weight`` against a 5-hour and a
    weekly window, each starting at its first request; past ``five_hour_tokens`` they get 1308. None: no cap
    (the quota API then reports 0 %).
    """

    level: str = "pro"
    five_hour_tokens: int | None = None
    weekly_tokens: int | None = None
    monthly_tool_calls: int = 1000


def _profiles() -> dict[str, ModelProfile]:
    return {
        # Fast pay-as-you-go flagship: mild peak slowdown, rare failures.
        "glm-4.7": ModelProfile(
            ttft_s=0.3,
            token_s=1 / 60,
            ttft_jitter=0.15,
            peak_factor=1.5,
            output_tokens=120,
            cached_share=0.3,
            reasoning_share=0.5,
            failure_rates={"1305": 0.005, "500": 0.002, "502": 0.001, "cut": 0.002},
        ),
        # Free tier: one request at a time, 20/min, 250/day, and often throttled (more so at peak).
        "glm-4.7-flash": ModelProfile(
            ttft_s=0.6,
            token_s=1 / 40,
            ttft_jitter=0.25,
            peak_factor=2.0,
            peak_failure_factor=2.0,
            output_tokens=80,
            cached_share=0.1,
            reasoning_share=0.4,
            failure_rates={"1302": 0.08, "1305": 0.06, "stall": 0.002, "cut": 0.005},
            concurrency=1,
            rpm=20,
            rpd=250,
        ),
        # Big model: slow, and three times slower (and flakier, and quota-hungrier) in Beijing's afternoon.
        "glm-5": ModelProfile(
            ttft_s=0.9,
            token_s=1 / 35,
            ttft_jitter=0.2,
            peak_factor=3.0,
            peak_failure_factor=3.0,
            output_tokens=160,
            cached_share=0.2,
            reasoning_share=0.6,
            failure_rates={"1305": 0.02, "1302": 0.01, "500": 0.005, "stall": 0.001},
            quota_weight=2.0,
            peak_quota_weight=3.0,
        ),
        # Previous flagship: steady, occasionally filtered or cut.
        "glm-4.6": ModelProfile(
            ttft_s=0.4,
            token_s=1 / 50,
            ttft_jitter=0.15,
            peak_factor=1.8,
            output_tokens=100,
            cached_share=0.25,
            reasoning_share=0.4,
            failure_rates={"1305": 0.01, "502": 0.003, "cut": 0.003, "sensitive": 0.002, "1301": 0.002},
        ),
    }


def default_profiles() -> dict[str, ModelProfile]:
    """The demo's models: ``glm-4.7`` (fast, paid), ``glm-4.7-flash`` (free, throttled), ``glm-5`` (strong
    peak slowdown) and ``glm-4.6``. A new dict on every call."""
    return _profiles()


@dataclass
class SimConfig:
    """Everything a simulator instance needs: the models, the seed, the clock and the Coding Plan.

    The clock is the real UTC time shifted by ``clock_offset_s``, or ``fixed_now`` (aware) when set; a
    request's ``X-Sim-Time`` header and the ``/_sim/clock`` endpoint override it. ``stall_s`` is how long a
    ``stall`` failure keeps silent. An API key starting with ``rejected_key_prefix`` fails authentication.
    """

    models: dict[str, ModelProfile] = field(default_factory=default_profiles)
    seed: int = 0
    clock_offset_s: float = 0.0
    fixed_now: datetime | None = None
    stall_s: float = 3600.0
    coding_plan: CodingPlan = field(default_factory=CodingPlan)
    rejected_key_prefix: str = "invalid"

    def __post_init__(self) -> None:
        if self.fixed_now is not None and self.fixed_now.tzinfo is None:
            raise ValueError("SimConfig.fixed_now must be timezone-aware")


def demo_config(seed: int = 42) -> SimConfig:
    """The demo's simulator: :func:`default_profiles` and a Pro Coding Plan with token caps."""
    return SimConfig(
        models=default_profiles(),
        seed=seed,
        coding_plan=CodingPlan(level="pro", five_hour_tokens=2_000_000, weekly_tokens=20_000_000),
    )
