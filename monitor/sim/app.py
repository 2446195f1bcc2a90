"""The simulated provider as a plain ASGI application (:class:`SimApp`).

Routes (POST unless noted)::

    /api/paas/v4/chat/completions            openai dialect, Zhipu shape (also /api/coding/paas/v4/..., /v1/...)
    /compatible-mode/v1/chat/completions     openai dialect, DashScope compatible-mode shape
    /api/anthropic/v1/messages               anthropic dialect (also /v1/messages)
    /api/anthropic/v1/messages/count_tokens  anthropic token counting (also /v1/messages/count_tokens)
    /api/v1/services/aigc/text-generation/generation
                                             DashScope native; SSE with ``X-DashScope-SSE: enable`` or
                                             ``Accept: text/event-stream``, JSON otherwise
    GET /api/paas/v4/models                  the simulated models (also /v1/models, ...)
    GET /api/monitor/usage/quota/limit       Coding Plan quota, Z.ai's shape
    GET /healthz
    GET|POST|DELETE /_sim/clock              read / set (``{"now": iso, "frozen": bool}`` or
                                             ``{"offset_s": s}``) / reset the simulator's clock
    POST /_sim/reset                         forget counters, limits and statistics
    GET /_sim/stats                          requests and outcomes per model

Request headers for tests: ``X-Sim-Fail: <kind>`` forces a failure (see ``monitor.sim.profiles``),
``X-Sim-Time: <ISO 8601>`` sets "now" for that request (peak hours and rate windows), ``X-Sim-TTFT-Ms`` and
``X-Sim-Token-Ms`` set the exact timing (no peak factor, no jitter), ``X-Sim-Cut-After: N`` the number of
tokens before a ``cut``/``reset``/``sensitive`` stop, ``X-Sim-Stall-Ms`` the length of a ``stall``. Every
inference answer carries ``x-sim-outcome: <kind>``. API keys are checked for presence only (a key starting
with ``SimConfig.rejected_key_prefix`` fails) and never logged.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime
from typing import Any

from monitor.asgi_drop import DropConnection, install_quiet_drop_filter
from monitor.sim.failures import Flavour, Reply, dumps, render_error
from monitor.sim.intake import BadRequest, Knobs, SimRequest, api_key, parse_request
from monitor.sim.plan import Plan, Wire, make_plan, uuid_like, zhipu_id
from monitor.sim.profiles import ModelProfile, SimConfig, estimate_prompt_tokens
from monitor.sim.state import SimState, parse_sim_time
from monitor.sim.wire_anthropic import AnthropicWire
from monitor.sim.wire_dashscope import DashScopeWire
from monitor.sim.wire_openai import CompatWire, ZhipuWire

__all__ = ["SimApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# path -> (flavour, counts against the Coding Plan)
_INFERENCE: dict[str, tuple[Flavour, bool]] = {
    "/api/paas/v4/chat/completions": ("zhipu", False),
    "/api/coding/paas/v4/chat/completions": ("zhipu", True),
    "/v1/chat/completions": ("zhipu", False),
    "/compatible-mode/v1/chat/completions": ("compat", False),
    "/api/anthropic/v1/messages": ("anthropic", True),
    "/v1/messages": ("anthropic", False),
    "/api/v1/services/aigc/text-generation/generation": ("dashscope", False),
}
_MODEL_LISTS = frozenset(
    {"/api/paas/v4/models", "/api/coding/paas/v4/models", "/v1/models", "/compatible-mode/v1/models"}
)
_QUOTA = "/api/monitor/usage/quota/limit"
# Anthropic's token counting (Claude Code calls it before many turns); Z.ai's anthropic endpoint answers it too.
_COUNT_TOKENS = frozenset({"/api/anthropic/v1/messages/count_tokens", "/v1/messages/count_tokens"})
_WIRES: dict[Flavour, Wire] = {
    "zhipu": ZhipuWire(),
    "compat": CompatWire(),
    "anthropic": AnthropicWire(),
    "dashscope": DashScopeWire(),
}


def _count_tokens(body: bytes) -> Reply:
    """``{"input_tokens": n}`` for a Messages request: about one token per four characters of its text."""
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return _plain(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad JSON"}})
    text = json.dumps(request.get("messages", [])) + json.dumps(request.get("system", ""))
    return _plain(200, {"input_tokens": max(1, len(text) // 4)})


class _Abort(DropConnection):
    """Raised to make uvicorn drop the connection mid-response (the ``reset`` and ``cut`` failures)."""


class SimApp:
    """ASGI app of one simulator instance; ``state`` holds its clock, counters and statistics."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        self.state = SimState(self.config)
        self._ids = random.Random(f"{self.config.seed}/ids")  # ids of answers refused before admission
        install_quiet_drop_filter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        arrived = asyncio.get_running_loop().time()  # timings count from here, as the client's clock does
        body = await _read_body(receive)
        if body is None:
            return  # the client left before sending its request
        path = scope["path"].rstrip("/") or "/"
        method = scope["method"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        route = _INFERENCE.get(path)
        if route is not None:
            if method != "POST":
                await _send_reply(send, _plain(405, {"error": "use POST"}))
                return
            await self._inference(route[0], route[1], headers, body, arrived, receive, send)
        elif path in _COUNT_TOKENS and method == "POST":
            await _send_reply(send, _count_tokens(body))
        elif path in _MODEL_LISTS and method == "GET":
            await _send_reply(send, self._model_list())
        elif path == "/healthz" and method == "GET":
            await _send_reply(send, _plain(200, {"status": "ok"}))
        elif path == _QUOTA and method == "GET":
            await _send_reply(send, self._quota(headers))
        elif path.startswith("/_sim/"):
            await _send_reply(send, self._admin(path, method, body))
        else:
            await _send_reply(send, _plain(404, {"error": {"code": "404", "message": f"No route {path}"}}))

    # -- inference ---------------------------------------------------------------------------------------

    async def _inference(
        self,
        flavour: Flavour,
        coding: bool,
        headers: dict[str, str],
        body: bytes,
        t0: float,
        receive: Receive,
        send: Send,
    ) -> None:
        if not self._authorized(api_key(headers)):
            self.state.reject("auth")
            await _send_reply(send, self._refuse(flavour, "auth"))
            return
        try:
            req = parse_request(flavour, body, headers)
        except BadRequest as exc:
            self.state.reject("1214")
            await _send_reply(send, self._refuse(flavour, "1214", detail=str(exc)))
            return
        profile = self.config.models.get(req.model)
        if profile is None:
            self.state.reject("1211")
            await _send_reply(send, self._refuse(flavour, "1211", model=req.model))
            return
        try:
            knobs = Knobs.from_headers(headers)
            now = parse_sim_time(headers["x-sim-time"]) if "x-sim-time" in headers else self.state.clock.now()
        except ValueError as exc:
            self.state.reject("1214")
            await _send_reply(send, self._refuse(flavour, "1214", detail=f"bad X-Sim-* header: {exc}"))
            return
        thinking = profile.thinking_default if req.thinking is None else req.thinking
        n = profile.output_tokens if req.max_tokens is None else min(req.max_tokens, profile.output_tokens)
        prompt = (
            profile.prompt_tokens if profile.prompt_tokens is not None else estimate_prompt_tokens(req.prompt_chars)
        )
        adm = self.state.admit(req.model, profile, now, forced=knobs.fail, coding=coding, tokens=prompt + n)
        if adm.immediate:
            zid, rid = zhipu_id(now, adm.rng), uuid_like(adm.rng)
            reply = render_error(flavour, adm.kind, model=req.model, zid=zid, rid=rid, reset_at=adm.reset_at)
            await _send_reply(send, reply, adm.kind)
            return
        try:
            plan = self._plan(req, profile, adm.kind, adm.rng, now, adm.peak, thinking, knobs)
            stall_s = knobs.stall_ms / 1000 if knobs.stall_ms is not None else self.config.stall_s
            await _until_disconnect(receive, self._deliver(plan, _WIRES[flavour], t0, stall_s, send))
        finally:
            self.state.release(req.model)

    def _plan(
        self,
        req: SimRequest,
        profile: ModelProfile,
        kind: str,
        rng: random.Random,
        now: datetime,
        peak: bool,
        thinking: bool,
        knobs: Knobs,
    ) -> Plan:
        plan = make_plan(
            model=req.model,
            profile=profile,
            kind=kind,
            rng=rng,
            now=now,
            peak=peak,
            stream=req.stream,
            prompt_chars=req.prompt_chars,
            max_tokens=req.max_tokens,
            thinking=thinking,
            ttft_ms=knobs.ttft_ms,
            token_ms=knobs.token_ms,
            cut_after=knobs.cut_after,
        )
        plan.include_usage, plan.incremental, plan.text_format = req.include_usage, req.incremental, req.text_format
        return plan

    async def _deliver(self, plan: Plan, wire: Wire, t0: float, stall_s: float, send: Send) -> None:
        loop = asyncio.get_running_loop()
        if plan.kind == "stall":
            await asyncio.sleep(stall_s)
            t0 = loop.time()
        start = t0 + plan.ttft_s
        outcome = (b"x-sim-outcome", plan.kind.encode())
        if not plan.stream:
            emitted = plan.n if plan.kind in ("cut", "reset") else plan.stop_after
            await _sleep_until(loop, start + emitted * plan.token_s)
            reply = wire.body(plan, emitted)
            if plan.kind in ("cut", "reset"):
                # Headers and half the body, then the connection drops.
                head = [(b"content-type", reply.content_type), *reply.headers, outcome]
                await send({"type": "http.response.start", "status": reply.status, "headers": head})
                await send(
                    {"type": "http.response.body", "body": reply.body[: len(reply.body) // 2], "more_body": True}
                )
                raise _Abort
            await _send_reply(send, reply, plan.kind)
            return
        await _sleep_until(loop, start, precise=True)
        head = [(b"content-type", wire.stream_type), (b"cache-control", b"no-cache"), *wire.headers(plan), outcome]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        first = wire.head(plan) + (wire.token(plan, 0) if plan.stop_after > 0 else b"")
        await send({"type": "http.response.body", "body": first, "more_body": True})
        for i in range(1, plan.stop_after):
            await _sleep_until(loop, start + i * plan.token_s)
            await send({"type": "http.response.body", "body": wire.token(plan, i), "more_body": True})
        if plan.kind == "reset":
            raise _Abort
        if plan.kind == "cut":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await _sleep_until(loop, start + plan.stop_after * plan.token_s)
        await send({"type": "http.response.body", "body": wire.end(plan, plan.stop_after), "more_body": False})

    def _authorized(self, key: str | None) -> bool:
        return bool(key) and not (key or "").startswith(self.config.rejected_key_prefix)

    def _refuse(self, flavour: Flavour, kind: str, *, model: str = "", detail: str | None = None) -> Reply:
        now = self.state.clock.now()
        zid, rid = zhipu_id(now, self._ids), uuid_like(self._ids)
        return render_error(flavour, kind, model=model, zid=zid, rid=rid, detail=detail)

    # -- everything else -----------------------------------------------------------------------------------

    def _model_list(self) -> Reply:
        data = [
            {"id": name, "object": "model", "created": 1735689600, "owned_by": "z-ai"} for name in self.config.models
        ]
        return Reply(200, dumps({"object": "list", "data": data}))

    def _quota(self, headers: dict[str, str]) -> Reply:
        forced = headers.get("x-sim-fail")
        if forced == "502":
            return render_error("zhipu", "502")
        if forced == "500":
            return _plain(500, {"code": 500, "msg": "Internal Error", "success": False})
        if forced == "auth" or not self._authorized(api_key(headers)):
            return _plain(200, {"code": 401, "msg": "token expired or incorrect", "success": False})
        try:
            now = parse_sim_time(headers["x-sim-time"]) if "x-sim-time" in headers else self.state.clock.now()
        except ValueError:
            now = self.state.clock.now()
        answer = {"code": 200, "msg": "Operation successful", "data": self.state.quota(now), "success": True}
        return Reply(200, (json.dumps(answer, ensure_ascii=False, indent=2) + "\n").encode())

    def _admin(self, path: str, method: str, body: bytes) -> Reply:
        clock = self.state.clock
        if path == "/_sim/stats" and method == "GET":
            return _plain(200, self.state.stats())
        if path == "/_sim/reset" and method == "POST":
            self.state.reset()
            return _plain(200, {"ok": True})
        if path != "/_sim/clock":
            return _plain(404, {"error": f"no admin route {method} {path}"})
        if method == "DELETE":
            clock.reset()
        elif method == "POST":
            try:
                spec = json.loads(body or b"{}")
                if not isinstance(spec, dict):
                    raise ValueError("expected a JSON object")
                if "now" in spec:
                    clock.set_now(parse_sim_time(str(spec["now"])), frozen=bool(spec.get("frozen", False)))
                elif "offset_s" in spec:
                    clock.set_offset(float(spec["offset_s"]))
                else:
                    raise ValueError('give "now" (ISO 8601) or "offset_s"')
            except (ValueError, TypeError) as exc:
                return _plain(400, {"error": str(exc)})
        elif method != "GET":
            return _plain(405, {"error": "use GET, POST or DELETE"})
        return _plain(200, clock.describe())


# -- ASGI plumbing ------------------------------------------------------------------------------------------


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _until_disconnect(receive: Receive, work: Awaitable[None]) -> None:
    """Run ``work``; if the client disconnects first, cancel it and return quietly.

    Without this a stalled or slow answer would keep running (and hold its concurrency slot and the
    server's shutdown) long after the client gave up.
    """
    task = asyncio.current_task()
    assert task is not None
    state = {"finished": False, "gone": False}

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not state["finished"]:
                    state["gone"] = True
                    task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        await work
    except asyncio.CancelledError:
        if not state["gone"]:
            raise
        task.uncancel()
    finally:
        state["finished"] = True
        watcher.cancel()


# The event loop's timers fire up to ~1 ms late (epoll rounds its timeout up to whole milliseconds). For
# the first byte, whose timing clients measure as TTFT, we wake this much early and yield until the deadline.
_PRECISION_S = 0.0012


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float, *, precise: bool = False) -> None:
    """Sleep until ``deadline`` (loop time). Absolute deadlines keep per-token delays from drifting;
    ``precise`` trades ~1 ms of yielding (not blocking: other requests run) for sub-millisecond accuracy."""
    delay = deadline - loop.time()
    if precise:
        if delay > _PRECISION_S:
            await asyncio.sleep(delay - _PRECISION_S)
        while loop.time() < deadline:
            await asyncio.sleep(0)
    elif delay > 0:
        await asyncio.sleep(delay)


async def _send_reply(send: Send, reply: Reply, outcome: str | None = None) -> None:
    headers = [(b"content-type", reply.content_type), (b"content-length", str(len(reply.body)).encode())]
    headers += reply.headers
    if outcome is not None:
        headers.append((b"x-sim-outcome", outcome.encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body, "more_body": False})


def _plain(status: int, obj: object) -> Reply:
    return Reply(status, dumps(obj))


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
