"""The Coding Plan quota poller against real local HTTP servers on 127.0.0.1 (the recorded answers served
verbatim by http.server, and the simulator), on SQLite and Postgres: every answer shape is read without
raising, the right snapshots are stored, and the official figure wins in quota_statuses while it is fresh."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from monitor.config import CodingPlan, Settings, settings_from_dict
from monitor.events import UsageEvent
from monitor.models import QuotaSnapshotRow
from monitor.outcomes import Outcome
from monitor.quota import QuotaStatus, quota_statuses
from monitor.quota_poller import PollResult, parse_quota_response, poll_quota, poll_quota_async, quota_url
from monitor.sim import CodingPlan as SimCodingPlan
from monitor.sim import ModelProfile, SimConfig, run_in_thread
from monitor.writer import write_events
from tests.casefiles import load_http

KEY = "0123456789abcdef0123456789abcdef.AbCdEfGhIjKlMnOp"
ENV = {"ZAI_CODING_API_KEY": KEY, "BIGMODEL_CODING_API_KEY": KEY}
QUOTA_PATH = "/api/monitor/usage/quota/limit"


# ---------------------------------------------------------------------------------------------------------
# A real local server that answers with whatever the test sets, byte for byte.


class _Handler(BaseHTTPRequestHandler):
    server: _QuotaServer

    def do_GET(self) -> None:
        self.server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        status, headers, body = self.server.reply
        self.send_response(status)
        for name, value in headers.items():
            if name not in ("content-length", "transfer-encoding", "date", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuotaServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reply: tuple[int, dict[str, str], bytes] = (500, {}, b"")
        self.seen: list[tuple[str, dict[str, str]]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, status: int, body: bytes | str | dict[str, Any], **headers: str) -> None:
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        self.reply = (status, {"content-type": "application/json", **headers}, body)

    def answer_fixture(self, name: str) -> datetime:
        """Serve a recorded answer; returns the time it was recorded (its Date header)."""
        fx = load_http(name)
        self.reply = (fx.status, dict(fx.headers), fx.body)
        return parsedate_to_datetime(fx.headers["date"]).astimezone(UTC)


@pytest.fixture(scope="module")
def server() -> Iterator[_QuotaServer]:
    srv = _QuotaServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def quota_server(server: _QuotaServer) -> _QuotaServer:
    server.seen.clear()
    return server


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def settings_for(base_url: str, provider: str = "zai-coding", **plan: Any) -> Settings:
    return settings_from_dict(
        {
            "providers": {provider: {"base_url": base_url + "/api/coding/paas/v4"}},
            "plans": [
                {
                    "kind": "coding_plan",
                    "name": "coding",
                    "provider": provider,
                    "level": "pro",
                    "five_hour_limit": 1000,
                    "weekly_limit": 10000,
                    **plan,
                }
            ],
        }
    )


def coding_plan(settings: Settings) -> CodingPlan:
    plan = settings.plan("coding")
    assert isinstance(plan, CodingPlan)
    return plan


def snapshots(engine: Engine) -> list[dict[str, Any]]:
    s = QuotaSnapshotRow
    cols = (s.ts, s.provider, s.plan, s.level, s.limit_type, s.window, s.percentage, s.used, s.limit, s.remaining)
    with engine.connect() as conn:
        rows = conn.execute(select(*cols, s.next_reset, s.source).order_by(s.id)).mappings().all()
    return [dict(r) for r in rows]


def count_snapshots(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(QuotaSnapshotRow)).scalar_one())


def ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def window(statuses: list[QuotaStatus], label: str) -> QuotaStatus:
    found = [s for s in statuses if s.window == label]
    assert len(found) == 1, [s.window for s in statuses]
    return found[0]


# ---------------------------------------------------------------------------------------------------------
# The recorded answers


def test_zai_answer_is_stored_window_by_window(engine, quota_server, client) -> None:
    at = quota_server.answer_fixture("quota_limit")
    settings = settings_for(quota_server.base_url)

    result = poll_quota(engine, settings, coding_plan(settings), client, now=at, environ=ENV)

    assert result.ok and result.status == "ok" and result.stored == 3 and result.level == "pro"
    assert result.http_status == 200 and result.polled_at == at
    # The quota API lives at the host root, whatever the inference base path; the key goes in raw.
    path, headers = quota_server.seen[-1]
    assert path == QUOTA_PATH and headers["authorization"] == KEY
    common = {"ts": at, "provider": "zai-coding", "plan": "coding", "level": "pro", "source": "official"}
    assert snapshots(engine) == [
        {**common, "limit_type": "TOKENS_LIMIT", "window": "5h", "percentage": 0.0, "used": None, "limit": None,
         "remaining": None, "next_reset": None},
        {**common, "limit_type": "TOKENS_LIMIT", "window": "1w", "percentage": 0.0, "used": None, "limit": None,
         "remaining": None, "next_reset": ms(1779792169974)},
        {**common, "limit_type": "TIME_LIMIT", "window": "1mo", "percentage": 0.0, "used": 0.0, "limit": 1000.0,
         "remaining": 1000.0, "next_reset": ms(1779964969979)},
    ]  # fmt: skip
    month = result.windows[2]
    assert (month.unit, month.number) == (5, 1)
    assert month.details == (("search-prime", 0.0), ("web-reader", 0.0), ("zread", 0.0))


def test_bigmodel_answer_is_stored_window_by_window(engine, quota_server, client) -> None:
    at = quota_server.answer_fixture("quota_limit_bigmodel")
    settings = settings_for(quota_server.base_url, provider="bigmodel-coding", level="lite")

    result = poll_quota(engine, settings, coding_plan(settings), client, now=at, environ=ENV)

    assert result.ok and result.stored == 2 and result.level == "lite"
    common = {"ts": at, "provider": "bigmodel-coding", "plan": "coding", "level": "lite", "source": "official"}
    assert snapshots(engine) == [
        {**common, "limit_type": "TIME_LIMIT", "window": "1mo", "percentage": 28.0, "used": 28.0, "limit": 100.0,
         "remaining": 72.0, "next_reset": ms(1772615765983)},
        {**common, "limit_type": "TOKENS_LIMIT", "window": "5h", "percentage": 1.0, "used": None, "limit": None,
         "remaining": None, "next_reset": ms(1771073738808)},
    ]  # fmt: skip
    assert result.windows[0].details == (("search-prime", 67.0), ("web-reader", 33.0), ("zread", 0.0))


def test_auth_error_in_a_200_body_stores_nothing(engine, quota_server, client) -> None:
    at = quota_server.answer_fixture("quota_limit_auth_error")
    settings = settings_for(quota_server.base_url)

    result = poll_quota(engine, settings, coding_plan(settings), client, now=at, environ=ENV)

    assert not result.ok and result.status == "auth_error" and result.http_status == 200
    assert result.message is not None and "token expired or incorrect" in result.message
    assert KEY not in result.message and KEY.split(".")[0] not in repr(result)
    assert count_snapshots(engine) == 0


# ---------------------------------------------------------------------------------------------------------
# Hand-made variants: odd but usable answers are stored, garbage is an error result, nothing raises.

AT = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
RESET = AT + timedelta(hours=3)
RESET_MS = int(RESET.timestamp() * 1000)


def ok_body(*limits: Any, **data: Any) -> dict[str, Any]:
    return {"code": 200, "msg": "Operation successful", "data": {"limits": list(limits), **data}, "success": True}


USABLE: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = [
    (
        "fields missing",
        {"code": 200, "data": {"limits": [{"type": "TOKENS_LIMIT"}, {"unit": 3, "number": 5, "percentage": 10}]}},
        [
            {"limit_type": "TOKENS_LIMIT", "window": None, "percentage": None, "level": None},
            {"limit_type": "UNKNOWN", "window": "5h", "percentage": 10.0, "level": None},
        ],
    ),
    (
        "percentage out of range is stored raw",
        ok_body(
            {"type": "TOKENS_LIMIT", "unit": 3, "number": 5, "percentage": 150, "nextResetTime": RESET_MS},
            {"type": "TOKENS_LIMIT", "unit": 6, "number": 1, "percentage": -5},
            level="max",
        ),
        [
            {"limit_type": "TOKENS_LIMIT", "window": "5h", "percentage": 150.0, "next_reset": RESET, "level": "max"},
            {"limit_type": "TOKENS_LIMIT", "window": "1w", "percentage": -5.0, "next_reset": None, "level": "max"},
        ],
    ),
    (
        "unknown type and unit keep their raw names",
        ok_body({"type": "FANCY_NEW_LIMIT", "unit": 9, "number": 2, "usage": 50, "currentValue": 5, "remaining": 45}),
        [{"limit_type": "FANCY_NEW_LIMIT", "window": "unit9x2", "used": 5.0, "limit": 50.0, "remaining": 45.0}],
    ),
    (
        "numbers as strings, seconds for a reset time, junk entries skipped",
        ok_body(
            {
                "type": "TOKENS_LIMIT",
                "unit": "3",
                "number": "5",
                "percentage": "42.5",
                "nextResetTime": RESET_MS // 1000,
            },
            "not an object",
            {"type": "TOKENS_LIMIT", "unit": 6, "number": 1, "percentage": True, "nextResetTime": "soon"},
            {"type": "TOKENS_LIMIT", "unit": 6, "number": 1, "percentage": None, "nextResetTime": 1e30},
            level="lite",
        ),
        [
            {"limit_type": "TOKENS_LIMIT", "window": "5h", "percentage": 42.5, "next_reset": RESET},
            {"limit_type": "TOKENS_LIMIT", "window": "1w", "percentage": None, "next_reset": None},
            {"limit_type": "TOKENS_LIMIT", "window": "1w", "percentage": None, "next_reset": None},
        ],
    ),
    ("no limits at all", ok_body(level="pro"), []),
]


@pytest.mark.parametrize(("name", "body", "expected"), USABLE, ids=[u[0] for u in USABLE])
def test_odd_but_usable_answers_are_stored(engine, quota_server, client, name, body, expected) -> None:
    quota_server.answer(200, body)
    settings = settings_for(quota_server.base_url)

    result = poll_quota(engine, settings, coding_plan(settings), client, now=AT, environ=ENV)

    assert result.ok and result.stored == len(expected)
    rows = snapshots(engine)
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        assert {k: row[k] for k in want} == want


GARBAGE: list[tuple[str, int, bytes, str]] = [
    ("HTML with 200", 200, b"<html><body>Welcome to nginx!</body></html>", "bad_response"),
    ("recorded nginx 502", 502, load_http("zai_502_nginx_html").body, "http_error"),
    ("empty body", 200, b"", "bad_response"),
    ("500", 500, b'{"code":500,"msg":"Internal Error","success":false}', "http_error"),
    ("HTTP 401", 401, b'{"error":"unauthorized"}', "auth_error"),
    ("business error", 200, b'{"code":500,"msg":"system busy","success":false}', "api_error"),
    (
        "code 1001 auth",
        200,
        '{"code":1001,"msg":"Header中未收到Authorization参数","success":false}'.encode(),
        "auth_error",
    ),
    ("JSON array", 200, b"[1, 2, 3]", "bad_response"),
    ("JSON null", 200, b"null", "bad_response"),
    ("no data", 200, b'{"code":200,"success":true}', "bad_response"),
    (
        "limits not a list",
        200,
        b'{"code":200,"success":true,"data":{"limits":{"type":"TOKENS_LIMIT"}}}',
        "bad_response",
    ),
    ("binary", 200, bytes(range(256)), "bad_response"),
    ("deeply nested", 200, b"[" * 100_000 + b"]" * 100_000, "bad_response"),
]


@pytest.mark.parametrize(("name", "status", "body", "verdict"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_is_an_error_result_and_stores_nothing(
    engine, quota_server, client, name, status, body, verdict
) -> None:
    quota_server.answer(status, body)
    settings = settings_for(quota_server.base_url)

    result = poll_quota(engine, settings, coding_plan(settings), client, now=AT, environ=ENV)

    assert result.status == verdict and not result.ok and result.stored == 0
    assert result.http_status == status and result.message
    assert count_snapshots(engine) == 0


def test_no_server_is_a_network_error(engine, client) -> None:
    probe = _QuotaServer()
    dead = probe.base_url  # a port that was just free and is closed again
    probe.server_close()
    settings = settings_for(dead)

    result = poll_quota(engine, settings, coding_plan(settings), client, now=AT, environ=ENV)

    assert result.status == "network_error" and result.http_status is None and result.message
    assert count_snapshots(engine) == 0


def test_no_key_means_no_request(engine, quota_server, client) -> None:
    quota_server.answer(200, ok_body())
    settings = settings_for(quota_server.base_url)

    result = poll_quota(engine, settings, coding_plan(settings), client, now=AT, environ={})

    assert result.status == "no_key" and "ZAI_CODING_API_KEY" in (result.message or "")
    assert quota_server.seen == [] and count_snapshots(engine) == 0
    # The plan's own key variable wins over the provider's.
    own = settings_for(quota_server.base_url, api_key_env="MY_PLAN_KEY")
    result = poll_quota(engine, own, coding_plan(own), client, now=AT, environ={"MY_PLAN_KEY": "k-1"})
    assert result.ok and quota_server.seen[-1][1]["authorization"] == "k-1"


def test_async_poll_reads_the_same_answer(engine, quota_server) -> None:
    at = quota_server.answer_fixture("quota_limit")
    settings = settings_for(quota_server.base_url)

    async def run() -> PollResult:
        async with httpx.AsyncClient(timeout=10) as ac:
            return await poll_quota_async(engine, settings, coding_plan(settings), ac, now=at, environ=ENV)

    result = asyncio.run(run())
    assert result.ok and result.stored == 3 and count_snapshots(engine) == 3


def test_parse_never_raises_on_anything() -> None:
    for status in (0, 200, 204, 301, 999):
        for body in (b"", b"{", b'{"data":{"limits":[{"type":{"a":1},"unit":1e400}]}}', b"\xff\xfe\x00"):
            assert parse_quota_response(status, body).status in ("ok", "bad_response", "http_error")


def test_quota_url_follows_the_overridden_host() -> None:
    plan = {"kind": "coding_plan", "name": "coding", "provider": "bigmodel-coding"}
    plain = settings_from_dict({"plans": [plan]})
    assert quota_url(plain, coding_plan(plain)) == "https://open.bigmodel.cn/api/monitor/usage/quota/limit"
    moved = settings_from_dict(
        {"plans": [plan], "providers": {"bigmodel-coding": {"base_url": "http://127.0.0.1:9/api/coding/paas/v4"}}}
    )
    assert quota_url(moved, coding_plan(moved)) == "http://127.0.0.1:9/api/monitor/usage/quota/limit"


# ---------------------------------------------------------------------------------------------------------
# The official figure wins while fresh


def coding_event(ts: datetime, model: str = "glm-4.7") -> UsageEvent:
    return UsageEvent(ts=ts, source="proxy", provider="zai-coding", model=model, vantage="t", outcome=Outcome.OK)


def test_official_figure_wins_while_fresh_then_the_estimate_returns(engine, quota_server, client) -> None:
    at = quota_server.answer_fixture("quota_limit")
    settings = settings_for(quota_server.base_url)
    # Local traffic the estimate counts: 30 prompts in the last hour.
    write_events(engine, [coding_event(at - timedelta(minutes=2 * i + 1)) for i in range(30)])

    absent = quota_statuses(engine, settings, now=at)
    assert [(s.window, s.source) for s in absent] == [("5 hours", "estimate"), ("week", "estimate")]
    assert window(absent, "5 hours").used == 30

    assert poll_quota(engine, settings, coding_plan(settings), client, now=at, environ=ENV).ok
    fresh = quota_statuses(engine, settings, now=at + timedelta(minutes=5))

    assert [(s.window, s.source) for s in fresh] == [
        ("5 hours", "official"),
        ("week", "official"),
        ("month (tool calls)", "official"),
    ]
    five = window(fresh, "5 hours")
    assert (five.used, five.limit, five.unit, five.share, five.as_of) == (Decimal(0), Decimal(100), "%", 0.0, at)
    assert five.resets_at is None
    week = window(fresh, "week")
    assert week.resets_at == ms(1779792169974) and not week.runs_out_before_reset
    month = window(fresh, "month (tool calls)")
    assert (month.used, month.limit, month.unit, month.resets_at) == (0, 1000, "calls", ms(1779964969979))

    stale = quota_statuses(engine, settings, now=at + timedelta(minutes=20))
    assert [(s.window, s.source) for s in stale] == [("5 hours", "estimate"), ("week", "estimate")]
    # The official weekly reset time still pins the local weekly window after the snapshot went stale.
    assert window(stale, "week").resets_at == ms(1779792169974)


def test_an_official_window_that_has_reset_since_gives_way(engine, quota_server, client) -> None:
    quota_server.answer(
        200,
        ok_body({"type": "TOKENS_LIMIT", "unit": 3, "number": 5, "percentage": 90, "nextResetTime": RESET_MS}),
    )
    settings = settings_for(quota_server.base_url)
    assert poll_quota(engine, settings, coding_plan(settings), client, now=AT, environ=ENV).ok

    before = window(quota_statuses(engine, settings, now=AT + timedelta(minutes=10)), "5 hours")
    assert before.source == "official" and before.used == 90 and before.resets_at == RESET

    # A new poll just after the reset would be fresh; without one, the estimate speaks again.
    after = window(quota_statuses(engine, settings, now=RESET + timedelta(seconds=1)), "5 hours")
    assert after.source == "estimate"


def test_official_burn_comes_from_successive_snapshots(engine, quota_server, client) -> None:
    settings = settings_for(quota_server.base_url)
    plan = coding_plan(settings)
    for minutes, pct in ((0, 10), (15, 20), (30, 40)):
        limit = {"type": "TOKENS_LIMIT", "unit": 3, "number": 5, "percentage": pct, "nextResetTime": RESET_MS}
        quota_server.answer(200, ok_body(limit))
        assert poll_quota(engine, settings, plan, client, now=AT + timedelta(minutes=minutes), environ=ENV).ok

    five = window(quota_statuses(engine, settings, now=AT + timedelta(minutes=31)), "5 hours")

    polled = AT + timedelta(minutes=30)
    assert five.source == "official" and five.used == 40 and five.as_of == polled
    assert five.burn_per_hour == 60  # 30 points in 30 minutes
    assert five.exhausts_at == polled + timedelta(hours=1)  # 60 points left: at 03:30, before the 05:00 reset
    assert five.resets_at == RESET and five.runs_out_before_reset


def test_out_of_range_percentages_are_clamped_for_display(engine, quota_server, client) -> None:
    quota_server.answer(
        200,
        ok_body(
            {"type": "TOKENS_LIMIT", "unit": 3, "number": 5, "percentage": 150, "nextResetTime": RESET_MS},
            {"type": "TOKENS_LIMIT", "unit": 6, "number": 1, "percentage": -5},
            {"type": "FANCY_NEW_LIMIT", "unit": 9, "number": 2, "usage": 50, "currentValue": 5},
            level="max",
        ),
    )
    settings = settings_for(quota_server.base_url)
    assert poll_quota(engine, settings, coding_plan(settings), client, now=AT, environ=ENV).ok

    statuses = quota_statuses(engine, settings, now=AT + timedelta(minutes=1))

    five, week = window(statuses, "5 hours"), window(statuses, "week")
    assert (five.used, five.share, five.source) == (Decimal(100), 1.0, "official")
    assert any("reported 150%" in n for n in five.notes) and five.exhausts_at == AT
    assert (week.used, week.share) == (Decimal(0), 0.0) and any("reported -5%" in n for n in week.notes)
    assert any("level 'max'" in n for n in five.notes)
    fancy = window(statuses, "FANCY_NEW_LIMIT unit9x2")
    assert (fancy.used, fancy.limit, fancy.unit, fancy.share) == (5, 50, "units", 0.1)
    # The database keeps what the provider said.
    assert [r["percentage"] for r in snapshots(engine)] == [150.0, -5.0, None]


# ---------------------------------------------------------------------------------------------------------
# Against the simulator: its Coding Plan windows fill with real requests and the poller reads them.


def test_simulator_quota_is_polled_and_wins(engine, client) -> None:
    now = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)  # 10:00 Beijing time, off-peak
    cfg = SimConfig(
        models={"glm-4.7": ModelProfile(ttft_s=0, token_s=0, output_tokens=10, prompt_tokens=90, peak_factor=1)},
        fixed_now=now,
        coding_plan=SimCodingPlan(level="pro", five_hour_tokens=1000, weekly_tokens=10_000),
    )
    with run_in_thread(cfg) as sim:
        for _ in range(3):  # 3 x 100 tokens: 30% of the 5-hour window, 3% of the week
            r = client.post(
                sim.base_url + "/api/coding/paas/v4/chat/completions",
                headers={"Authorization": f"Bearer {KEY}"},
                json={"model": "glm-4.7", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert r.status_code == 200
        settings = settings_for(sim.base_url, unit="tokens")
        result = poll_quota(engine, settings, coding_plan(settings), client, now=now, environ=ENV)
        refused = poll_quota(
            engine, settings, coding_plan(settings), client, now=now, environ={"ZAI_CODING_API_KEY": "invalid-key"}
        )

    assert result.ok and result.level == "pro"
    by_window = {w.window: w for w in result.windows}
    assert by_window["5h"].percentage == 30 and by_window["5h"].next_reset == now + timedelta(hours=5)
    assert by_window["1w"].percentage == 3
    assert refused.status == "auth_error" and count_snapshots(engine) == 3

    five = window(quota_statuses(engine, settings, now=now + timedelta(minutes=1)), "5 hours")
    assert (five.source, five.used, five.unit, five.resets_at) == ("official", 30, "%", now + timedelta(hours=5))
