"""The Coding Plan quota poller: reads the provider's official quota API and stores one snapshot per window.

``poll_quota`` (sync, ``httpx.Client``) and ``poll_quota_async`` (``httpx.AsyncClient``) call
``GET /api/monitor/usage/quota/limit`` on the plan provider's host (api.z.ai or open.bigmodel.cn), parse the
answer with ``parse_quota_response`` and store each window as a ``quota_snapshots`` row with source
``official``. They never raise: a refused key, an HTTP error, HTML, an empty body or any other garbage comes
back as a ``PollResult`` whose ``status`` says what went wrong, and nothing is stored.

Decisions (the endpoint is undocumented; fields come and go):

- URL: the provider's ``quota_api``; when ``[providers.<id>] base_url`` is overridden, its scheme and host
  replace the quota URL's (the quota API sits at the host root, not under the inference path), so a test or a
  relay can stand in for the provider.
- Key: ``plan.api_key_env``, else the provider's ``api_key_env``. It goes in ``Authorization`` as the raw key,
  without ``Bearer``, as Zhipu's own usage plugin does (zai-org/zai-coding-plugins, glm-plan-usage
  ``query-usage.mjs``); community tools that send ``Bearer <key>`` are also answered, and so is the simulator.
- Auth failure arrives as HTTP 200 with ``{"code":401,"msg":...,"success":false}``: status ``auth_error``.
- Window of a limit, from ``unit`` and ``number``: unit 3 = hours (``number`` 5: the 5-hour window), unit 6 =
  weeks (the weekly window), unit 5 = months (TIME_LIMIT: the monthly tool-call allowance). Sources: the
  recorded answers in tests/fixtures (quota_limit*.http: 3/5 next to the 5-hour cap, 6/1 the weekly one with a
  reset three days ahead, 5/1 the monthly MCP calls) and the mapping every public client of this endpoint
  uses. Other unit codes are kept as ``unit<U>x<N>`` rather than guessed.
- ``usage`` is the limit, ``currentValue`` the amount used, ``remaining`` what is left; each may be missing
  (TOKENS_LIMIT entries usually carry only ``percentage``). ``nextResetTime`` is epoch milliseconds (a value
  below 10^11 is taken as seconds); absent when the window has not started.
- ``percentage`` is stored exactly as reported, even outside 0-100 (it is evidence of what the provider
  said); ``monitor.quota`` clamps it for display and says so in the status notes.
- Unknown limit types are stored under their raw name (cut to the column's 32 characters).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, cast
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import Engine, Table, insert
from sqlalchemy.exc import SQLAlchemyError

from monitor.config import CodingPlan, Settings
from monitor.models import QuotaSnapshotRow
from monitor.redact import redact

log = logging.getLogger(__name__)

QUOTA_PATH = "/api/monitor/usage/quota/limit"
DEFAULT_POLL_INTERVAL_S = 300.0
"""How often the daemon should poll: often enough that a snapshot is rarely older than ``OFFICIAL_MAX_AGE``."""

TOKENS_LIMIT = "TOKENS_LIMIT"
TIME_LIMIT = "TIME_LIMIT"
WINDOW_5H = "5h"
WINDOW_WEEK = "1w"
WINDOW_MONTH = "1mo"

UNIT_CODES: Mapping[int, str] = {3: "h", 6: "w", 5: "mo"}
"""Window unit code -> label suffix (hours, weeks, months); see the module docstring for the sources."""

PollStatus = Literal[
    "ok", "auth_error", "no_key", "http_error", "api_error", "bad_response", "network_error", "store_error"
]
"""``store_error``: the answer was read but the database refused the snapshots (our side; the next poll retries)."""

_MAX_BODY_IN_MESSAGE = 120
_EPOCH_MIN = datetime(2000, 1, 1, tzinfo=UTC)
_EPOCH_MAX = datetime(2100, 1, 1, tzinfo=UTC)
_AUTH_CODES = frozenset({401, 403, 1000, 1001, 1002, 1003, 1004})


@dataclass(frozen=True, slots=True)
class QuotaWindow:
    """One entry of ``data.limits``: the provider's own figures for one window, None where it gave none."""

    limit_type: str
    unit: int | None
    number: int | None
    window: str | None
    percentage: float | None
    used: float | None
    limit: float | None
    remaining: float | None
    next_reset: datetime | None
    details: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ParsedQuota:
    """What one quota API answer says: ``status`` ``ok`` with the windows, or why it could not be used."""

    status: PollStatus
    level: str | None = None
    windows: tuple[QuotaWindow, ...] = ()
    message: str | None = None


@dataclass(frozen=True, slots=True)
class PollResult:
    """The outcome of one poll. ``windows`` were stored as snapshots at ``polled_at`` only when ``ok``."""

    plan: str
    provider: str
    status: PollStatus
    polled_at: datetime
    http_status: int | None = None
    level: str | None = None
    windows: tuple[QuotaWindow, ...] = ()
    message: str | None = None
    stored: int = 0

    @property
    def ok(self) -> bool:
        """True when the answer was read and its windows stored."""
        return self.status == "ok"


def plan_key(name: str) -> str:
    """The plan name as ``quota_snapshots.plan`` holds it (the column keeps 64 characters)."""
    return name[:64]


def window_label(unit: int | None, number: int | None) -> str | None:
    """``"5h"``, ``"1w"``, ``"1mo"`` for the known unit codes; ``"unit<U>x<N>"`` otherwise; None without a unit."""
    if unit is None:
        return None
    suffix = UNIT_CODES.get(unit)
    if suffix is not None and number is not None:
        return f"{number}{suffix}"
    return f"unit{unit}x{'?' if number is None else number}"


def quota_url(settings: Settings, plan: CodingPlan) -> str | None:
    """The quota API URL for ``plan``'s provider, moved to the overriding ``base_url``'s host if one is set."""
    provider = settings.catalog().get(plan.provider)
    if provider is None or provider.quota_api is None:
        return None
    override = settings.providers.get(plan.provider)
    if override is None or not override.base_url:
        return provider.quota_api
    base = urlsplit(override.base_url)
    quota = urlsplit(provider.quota_api)
    return urlunsplit((base.scheme, base.netloc, quota.path, quota.query, ""))


def quota_key(settings: Settings, plan: CodingPlan, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(the API key or None, the name of the environment variable it is read from)."""
    provider = settings.catalog().get(plan.provider)
    var = plan.api_key_env or (provider.api_key_env if provider else None)
    return ((environ.get(var) or None) if var else None), var


def request_headers(key: str) -> dict[str, str]:
    """Headers for the quota API: the raw key in ``Authorization`` (see the module docstring)."""
    return {"Authorization": key, "Accept": "application/json", "Accept-Language": "en-US,en"}


# ---------------------------------------------------------------------------------------------------------
# Parsing


def _num(value: Any) -> float | None:
    """A finite number from a JSON value (numbers and numeric strings); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return out if math.isfinite(out) else None


def _int(value: Any) -> int | None:
    n = _num(value)
    return int(n) if n is not None and n.is_integer() else None


def _epoch(value: Any) -> datetime | None:
    """A reset time from epoch milliseconds (or seconds, below 10^11); None when absent or implausible."""
    n = _num(value)
    if n is None or n <= 0:
        return None
    seconds = n / 1000.0 if n >= 1e11 else n
    try:
        when = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return when if _EPOCH_MIN <= when < _EPOCH_MAX else None


def _excerpt(body: bytes) -> str:
    text = body[:_MAX_BODY_IN_MESSAGE].decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    return redact(text) or "(empty body)"


def _window(entry: Mapping[str, Any]) -> QuotaWindow:
    raw_type = entry.get("type")
    limit_type = str(raw_type).strip() if isinstance(raw_type, str | int) and str(raw_type).strip() else "UNKNOWN"
    unit, number = _int(entry.get("unit")), _int(entry.get("number"))
    details: list[tuple[str, float]] = []
    raw_details = entry.get("usageDetails")
    if isinstance(raw_details, list):
        for d in raw_details:
            if isinstance(d, dict) and isinstance(d.get("modelCode"), str):
                amount = _num(d.get("usage"))
                if amount is not None:
                    details.append((d["modelCode"], amount))
    return QuotaWindow(
        limit_type=limit_type[:32],
        unit=unit,
        number=number,
        window=window_label(unit, number),
        percentage=_num(entry.get("percentage")),
        used=_num(entry.get("currentValue")),
        limit=_num(entry.get("usage")),
        remaining=_num(entry.get("remaining")),
        next_reset=_epoch(entry.get("nextResetTime")),
        details=tuple(details),
    )


def parse_quota_response(status: int, body: bytes) -> ParsedQuota:
    """Read one answer of the quota API (HTTP ``status`` and raw ``body``). Never raises."""
    try:
        return _parse(status, body)
    except Exception as exc:  # garbage must never take the poller down
        return ParsedQuota("bad_response", message=f"unreadable answer ({exc.__class__.__name__})")


def _parse(status: int, body: bytes) -> ParsedQuota:
    if status in (401, 403):
        return ParsedQuota("auth_error", message=f"HTTP {status}: the key was refused: {_excerpt(body)}")
    if not 200 <= status < 300:
        return ParsedQuota("http_error", message=f"HTTP {status}: {_excerpt(body)}")
    try:
        doc = json.loads(body)
    except ValueError:
        return ParsedQuota("bad_response", message=f"not JSON: {_excerpt(body)}")
    if not isinstance(doc, dict):
        return ParsedQuota("bad_response", message=f"expected a JSON object: {_excerpt(body)}")
    code = _int(doc.get("code"))
    msg = doc.get("msg") if isinstance(doc.get("msg"), str) else doc.get("message")
    msg_text = redact(str(msg))[:200] if msg is not None else "no message"
    if doc.get("success") is False or (code is not None and code not in (0, 200)):
        if code in _AUTH_CODES:
            return ParsedQuota("auth_error", message=f"the key was refused (code {code}): {msg_text}")
        return ParsedQuota("api_error", message=f"the quota API reported an error (code {code}): {msg_text}")
    data = doc.get("data")
    if not isinstance(data, dict):
        return ParsedQuota("bad_response", message="the answer has no data object")
    limits = data.get("limits")
    if not isinstance(limits, list):
        return ParsedQuota("bad_response", message="the answer has no data.limits list")
    windows = tuple(_window(e) for e in limits if isinstance(e, dict))
    skipped = len(limits) - len(windows)
    level = data.get("level")
    message = f"{skipped} limit entries were not objects and were skipped" if skipped else None
    return ParsedQuota(
        "ok", level=str(level)[:32] if isinstance(level, str | int) else None, windows=windows, message=message
    )


# ---------------------------------------------------------------------------------------------------------
# Storing and polling


def snapshot_rows(plan: CodingPlan, parsed: ParsedQuota, at: datetime) -> list[dict[str, Any]]:
    """The ``quota_snapshots`` rows (source ``official``) for a parsed answer read at ``at``."""
    return [
        {
            "ts": at,
            "provider": plan.provider,
            "plan": plan_key(plan.name),
            "level": parsed.level,
            "limit_type": w.limit_type,
            "window": w.window,
            "percentage": w.percentage,
            "used": w.used,
            "limit": w.limit,
            "remaining": w.remaining,
            "next_reset": w.next_reset,
            "source": "official",
        }
        for w in parsed.windows
    ]


def store_snapshots(engine: Engine, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert snapshot rows in one transaction."""
    if rows:
        with engine.begin() as conn:
            conn.execute(insert(cast(Table, QuotaSnapshotRow.__table__)), list(rows))


@dataclass(frozen=True, slots=True)
class _Prepared:
    url: str | None
    headers: dict[str, str]
    failure: PollResult | None


def _prepare(settings: Settings, plan: CodingPlan, environ: Mapping[str, str] | None, at: datetime) -> _Prepared:
    url = quota_url(settings, plan)
    if url is None:
        fail = PollResult(plan.name, plan.provider, "http_error", at, message=f"{plan.provider} has no quota API")
        return _Prepared(None, {}, fail)
    key, var = quota_key(settings, plan, environ if environ is not None else os.environ)
    if key is None:
        where = f"plans.{plan.name}.api_key_env or providers.{plan.provider}.api_key_env"
        fail = PollResult(
            plan.name, plan.provider, "no_key", at, message=f"no API key: set the environment variable {var} ({where})"
        )
        return _Prepared(url, {}, fail)
    return _Prepared(url, request_headers(key), None)


def _finish(
    engine: Engine, plan: CodingPlan, at: datetime, status: int | None, body: bytes | None, error: str | None
) -> PollResult:
    if error is not None or status is None or body is None:
        result = PollResult(plan.name, plan.provider, "network_error", at, message=error or "no response")
    else:
        parsed = parse_quota_response(status, body)
        result = PollResult(
            plan.name,
            plan.provider,
            parsed.status,
            at,
            http_status=status,
            level=parsed.level,
            windows=parsed.windows,
            message=parsed.message,
        )
        if parsed.status == "ok":
            try:
                rows = snapshot_rows(plan, parsed, at)
                store_snapshots(engine, rows)
                result = replace(result, stored=len(rows))
            except (SQLAlchemyError, ValueError) as exc:
                # Our side failed, not the provider's: say so; the next poll tries again.
                message = f"the answer was read but storing it failed ({exc.__class__.__name__})"
                result = replace(result, status="store_error", message=message)
    if not result.ok:
        log.warning("quota poll of plan %r: %s: %s", plan.name, result.status, result.message)
    return result


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _network_message(exc: Exception) -> str:
    return redact(f"{exc.__class__.__name__}: {exc}")[:300]


def poll_quota(
    engine: Engine,
    settings: Settings,
    plan: CodingPlan,
    client: httpx.Client,
    *,
    now: datetime | None = None,
    environ: Mapping[str, str] | None = None,
    timeout_s: float = 20.0,
) -> PollResult:
    """Read ``plan``'s official quota and store one snapshot per window (timestamped ``now``). Never raises
    for anything the provider or the network does; ``PollResult.status`` says what happened."""
    at = _now(now)
    prep = _prepare(settings, plan, environ, at)
    if prep.failure is not None or prep.url is None:
        assert prep.failure is not None
        return prep.failure
    try:
        response = client.get(prep.url, headers=prep.headers, timeout=timeout_s)
        status, body = response.status_code, response.content
    except Exception as exc:  # httpx errors, bad URLs, anything a transport can raise
        return _finish(engine, plan, at, None, None, _network_message(exc))
    return _finish(engine, plan, at, status, body, None)


async def poll_quota_async(
    engine: Engine,
    settings: Settings,
    plan: CodingPlan,
    client: httpx.AsyncClient,
    *,
    now: datetime | None = None,
    environ: Mapping[str, str] | None = None,
    timeout_s: float = 20.0,
) -> PollResult:
    """``poll_quota`` for the daemon's event loop: the request is awaited, the database write runs in a thread."""
    at = _now(now)
    prep = _prepare(settings, plan, environ, at)
    if prep.failure is not None or prep.url is None:
        assert prep.failure is not None
        return prep.failure
    try:
        response = await client.get(prep.url, headers=prep.headers, timeout=timeout_s)
        status, body = response.status_code, response.content
    except Exception as exc:
        return await asyncio.to_thread(_finish, engine, plan, at, None, None, _network_message(exc))
    return await asyncio.to_thread(_finish, engine, plan, at, status, body, None)
