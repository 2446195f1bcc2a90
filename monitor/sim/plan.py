"""One simulated answer, decided before its first byte: tokens, timing, ids and how it ends.

The renderers in ``wire_*`` turn a :class:`Plan` into bytes; the app sends them on schedule: token ``i``
(reasoning tokens first, then content) at ``ttft_s + i * token_s`` after the request arrived, and the closing
chunk (finish reason and usage) at ``ttft_s + emitted * token_s``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from monitor.sim.profiles import ModelProfile, estimate_prompt_tokens
from monitor.sim.state import CST

if TYPE_CHECKING:
    from monitor.sim.failures import Header, Reply

__all__ = ["Plan", "Wire", "make_plan", "uuid_like", "zhipu_id"]

_WORDS = (
    " the", " model", " answers", " quickly", " and", " clearly", ",", " with", " a", " short", " note",
    " about", " latency", " tokens", " cost", " peak", " hours", " in", " Beijing", ".", " It", " is",
    " simulated", " text", " for", " GLM", " Monitor", " so", " nothing", " here", " means", " much",
)  # fmt: skip


def zhipu_id(now: datetime, rng: random.Random) -> str:
    """A Zhipu request id: the Beijing wall-clock time ``yyyyMMddHHmmss`` and 16 hex digits."""
    return now.astimezone(CST).strftime("%Y%m%d%H%M%S") + f"{rng.getrandbits(64):016x}"


def uuid_like(rng: random.Random) -> str:
    """A DashScope request id (UUID layout, 8-4-4-4-12 hex digits) from ``rng``."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class Plan:
    """Everything about one answer. ``stop_after`` is how many token chunks are sent (fewer than all for
    ``cut``, ``reset`` and ``sensitive``); ``finish`` is ``stop``, ``length`` or ``sensitive``."""

    model: str
    kind: str
    stream: bool
    prompt_tokens: int
    cached_tokens: int
    thinking: bool
    reasoning: list[str]
    content: list[str]
    finish: str
    stop_after: int
    ttft_s: float
    token_s: float
    zid: str
    rid: str
    created: int
    include_usage: bool = False  # openai dialect, DashScope compatible mode
    incremental: bool = True  # DashScope native incremental_output
    text_format: bool = False  # DashScope native result_format "text"

    @property
    def n(self) -> int:
        """Output tokens of the whole answer (reasoning included)."""
        return len(self.reasoning) + len(self.content)

    def emitted_reasoning(self, emitted: int) -> int:
        """Reasoning tokens among the first ``emitted`` tokens."""
        return min(emitted, len(self.reasoning))

    def text(self, emitted: int) -> tuple[str, str]:
        """(reasoning text, content text) of the first ``emitted`` tokens."""
        r = self.emitted_reasoning(emitted)
        return "".join(self.reasoning[:r]), "".join(self.content[: emitted - r])

    def token(self, i: int) -> tuple[bool, str]:
        """Token ``i``: (is reasoning, text)."""
        if i < len(self.reasoning):
            return True, self.reasoning[i]
        return False, self.content[i - len(self.reasoning)]


def _words(rng: random.Random, count: int) -> list[str]:
    words = [rng.choice(_WORDS) for _ in range(count)]
    if words:
        words[0] = words[0].lstrip() or "Ok"
    return words


def make_plan(
    *,
    model: str,
    profile: ModelProfile,
    kind: str,
    rng: random.Random,
    now: datetime,
    peak: bool,
    stream: bool,
    prompt_chars: int,
    max_tokens: int | None,
    thinking: bool,
    ttft_ms: float | None,
    token_ms: float | None,
    cut_after: int | None,
) -> Plan:
    """Decide one answer. ``ttft_ms`` / ``token_ms`` (the ``X-Sim-TTFT-Ms`` / ``X-Sim-Token-Ms`` headers)
    are the exact timings when given: no peak factor, no jitter."""
    n = profile.output_tokens if max_tokens is None else min(max_tokens, profile.output_tokens)
    reasoning_n = math.floor(n * profile.reasoning_share) if thinking else 0
    prompt = profile.prompt_tokens if profile.prompt_tokens is not None else estimate_prompt_tokens(prompt_chars)
    factor = profile.peak_factor if peak else 1.0
    jitter = math.exp(rng.gauss(0.0, profile.ttft_jitter)) if profile.ttft_jitter > 0 else 1.0
    ttft = ttft_ms / 1000 if ttft_ms is not None else profile.ttft_s * factor * jitter
    per_token = token_ms / 1000 if token_ms is not None else profile.token_s * factor
    zid = zhipu_id(now, rng)
    rid = uuid_like(rng)
    words = _words(rng, n)
    stop_after = n
    finish = "length" if max_tokens is not None and max_tokens < profile.output_tokens else "stop"
    if kind in ("cut", "reset", "sensitive"):
        stop_after = max(0, min(cut_after, n)) if cut_after is not None else rng.randint(1, max(1, n - 1))
        if kind == "sensitive":
            finish = "sensitive"
    return Plan(
        model=model,
        kind=kind,
        stream=stream,
        prompt_tokens=prompt,
        cached_tokens=math.floor(prompt * profile.cached_share),
        thinking=thinking,
        reasoning=words[:reasoning_n],
        content=words[reasoning_n:],
        finish=finish,
        stop_after=stop_after,
        ttft_s=max(0.0, ttft),
        token_s=max(0.0, per_token),
        zid=zid,
        rid=rid,
        created=int(now.timestamp()),
    )


class Wire(Protocol):
    """Renders a :class:`Plan` in one dialect. ``head`` goes out with the first token (so nothing at all is
    sent before the TTFT), ``token(i)`` is chunk ``i``, ``end`` closes a stream that sent ``emitted``
    tokens (finish reason, usage, terminator); ``body`` is the whole non-stream answer."""

    stream_type: bytes

    def headers(self, plan: Plan) -> list[Header]: ...

    def head(self, plan: Plan) -> bytes: ...

    def token(self, plan: Plan, i: int) -> bytes: ...

    def end(self, plan: Plan, emitted: int) -> bytes: ...

    def body(self, plan: Plan, emitted: int) -> Reply: ...
