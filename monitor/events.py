"""Plain measured facts on their way to the database: ``UsageEvent`` and ``ProbeResult``.

They are made where a request happened (prober, transport, proxy), carry their own ``event_id`` so a replay is
recognised, and turn into table rows with ``to_row()``.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from monitor.money import Cost
from monitor.outcomes import Outcome
from monitor.request_kind import RequestKind
from monitor.usage import Usage

EventSource = Literal["probe", "transport", "proxy"]


def new_event_id() -> str:
    """A fresh, globally unique event id: a UUIDv7 (RFC 9562) as text, time-ordered.

    Time-ordered ids keep inserts at the end of the unique ``event_id`` index instead of scattering them over
    it, which is what limits SQLite's ingest rate with random ids (BENCHMARKS.md).
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 74 of these 80 bits are used
    value = (ms & _MS_MASK) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64 | 0b10 << 62 | (rand & _RAND_B_MASK)
    return str(uuid.UUID(int=value))


_MS_MASK = (1 << 48) - 1
_RAND_B_MASK = (1 << 62) - 1


def _clip(row: dict[str, Any], table: str) -> dict[str, Any]:
    """``row`` with every string cut to its column's size, so one over-long value cannot block a batch."""
    for name, size in _SIZES[table]:
        value = row.get(name)
        if isinstance(value, str) and len(value) > size:
            row[name] = value[:size]
    return row


def _column_sizes(table: str) -> tuple[tuple[str, int], ...]:
    from sqlalchemy import String

    from monitor.models import Base

    cols = Base.metadata.tables[table].columns
    return tuple((c.name, c.type.length) for c in cols if isinstance(c.type, String) and c.type.length)


_SIZES = {t: _column_sizes(t) for t in ("usage_events", "probe_results")}


def _usage_columns(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "images": usage.images,
        "request_id": usage.request_id,
        "finish_reason": usage.finish_reason,
        "complete": usage.complete,
    }


def _cost_columns(cost: Cost | None, price_source: str | None) -> dict[str, Any]:
    return {
        "cost_amount": cost.amount if cost else None,
        "cost_currency": cost.currency if cost else None,
        "price_source": price_source,
    }


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One request's usage, outcome and cost. ``model`` is the response's model, else the request's."""

    ts: datetime
    source: EventSource
    provider: str
    model: str | None
    vantage: str
    outcome: Outcome
    usage: Usage = field(default_factory=Usage)
    app: str | None = None
    stream: bool = False
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    retry_after_s: float | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    cost: Cost | None = None
    price_source: str | None = None
    kind: RequestKind = "generation"
    event_id: str = field(default_factory=new_event_id)

    table = "usage_events"

    def to_row(self) -> dict[str, Any]:
        """The ``usage_events`` row for this event (strings cut to their column sizes)."""
        row = {
            "event_id": self.event_id,
            "ts": self.ts,
            "source": self.source,
            "provider": self.provider,
            "model": self.model,
            "vantage": self.vantage,
            "app": self.app,
            "stream": self.stream,
            "outcome": str(self.outcome),
            "http_status": self.http_status,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "retry_after_s": self.retry_after_s,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "kind": self.kind,
            **_usage_columns(self.usage),
            **_cost_columns(self.cost, self.price_source),
        }
        return _clip(row, "usage_events")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe of one target: when, how fast, what came back and what the probe cost."""

    ts: datetime
    provider: str
    model: str
    vantage: str
    outcome: Outcome
    usage: Usage = field(default_factory=Usage)
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    retry_after_s: float | None = None
    connect_ms: float | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None
    tokens_per_s: float | None = None
    cost: Cost | None = None
    price_source: str | None = None
    event_id: str = field(default_factory=new_event_id)

    table = "probe_results"

    def to_row(self) -> dict[str, Any]:
        """The ``probe_results`` row for this result (strings cut to their column sizes)."""
        row = {
            "event_id": self.event_id,
            "ts": self.ts,
            "provider": self.provider,
            "model": self.model,
            "vantage": self.vantage,
            "outcome": str(self.outcome),
            "http_status": self.http_status,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "retry_after_s": self.retry_after_s,
            "connect_ms": self.connect_ms,
            "ttft_ms": self.ttft_ms,
            "total_ms": self.total_ms,
            "tokens_per_s": self.tokens_per_s,
            **_usage_columns(self.usage),
            **_cost_columns(self.cost, self.price_source),
        }
        return _clip(row, "probe_results")


class Event(Protocol):
    """Anything the writer stores: a row for ``table``, identified by ``event_id`` (``UsageEvent``,
    ``ProbeResult``, or a captured request whose row is built when the writer asks for it)."""

    @property
    def event_id(self) -> str: ...

    @property
    def table(self) -> str: ...

    def to_row(self) -> dict[str, Any]: ...
