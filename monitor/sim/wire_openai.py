"""The openai dialect: Zhipu / Z.ai's shape and DashScope compatible mode's shape.

Zhipu (tests/fixtures/zai_*): chunks carry ``id``, ``created``, ``model``, ``choices`` and no ``object``;
every delta repeats ``role``; reasoning arrives as ``reasoning_content`` with ``content: ""``; the usage
sits in the chunk with ``finish_reason`` whatever ``stream_options`` says, then ``data: [DONE]``. A content
filter stop is a last chunk with ``finish_reason: "sensitive"`` and no usage.

DashScope compatible mode (tests/fixtures/dashscope_compat_*): OpenAI's shape, ``object`` and ``logprobs``
included, a role-only first chunk, and with ``stream_options.include_usage`` a separate ``choices: []``
usage chunk before ``[DONE]``.
"""

from __future__ import annotations

import json
from typing import Any

from monitor.sim.failures import ZHIPU_HEADERS, Header, Reply, dumps
from monitor.sim.plan import Plan

__all__ = ["CompatWire", "ZhipuWire"]

_DONE = b"data: [DONE]\n\n"


def _text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _usage(plan: Plan, emitted: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": emitted,
        "total_tokens": plan.prompt_tokens + emitted,
        "prompt_tokens_details": {"cached_tokens": plan.cached_tokens},
    }
    if plan.thinking:
        usage["completion_tokens_details"] = {"reasoning_tokens": plan.emitted_reasoning(emitted)}
    return usage


class ZhipuWire:
    """Zhipu / Z.ai chat completions (``/api/paas/v4``, ``/api/coding/paas/v4``, ``/v1``)."""

    stream_type = b"text/event-stream;charset=UTF-8"

    def headers(self, plan: Plan) -> list[Header]:
        return list(ZHIPU_HEADERS)

    def head(self, plan: Plan) -> bytes:
        return b""

    def _prefix(self, plan: Plan) -> str:
        return f'data: {{"id":"{plan.zid}","created":{plan.created},"model":{_text(plan.model)},"choices":'

    def token(self, plan: Plan, i: int) -> bytes:
        reasoning, text = plan.token(i)
        if reasoning:
            delta = f'{{"role":"assistant","content":"","reasoning_content":{_text(text)}}}'
        else:
            delta = f'{{"role":"assistant","content":{_text(text)}}}'
        return f'{self._prefix(plan)}[{{"index":0,"delta":{delta}}}]}}\n\n'.encode()

    def end(self, plan: Plan, emitted: int) -> bytes:
        last = f'{self._prefix(plan)}[{{"index":0,"finish_reason":"{plan.finish}",'
        last += '"delta":{"role":"assistant","content":""}}]'
        if plan.finish != "sensitive":
            last += ',"usage":' + dumps(_usage(plan, emitted)).decode()
        return (last + "}\n\n").encode() + _DONE

    def body(self, plan: Plan, emitted: int) -> Reply:
        reasoning, content = plan.text(emitted)
        message: dict[str, Any] = {"content": content}
        if plan.thinking:
            message["reasoning_content"] = reasoning
        message["role"] = "assistant"
        usage = _usage(plan, emitted)
        answer = {
            "choices": [{"finish_reason": plan.finish, "index": 0, "message": message}],
            "created": plan.created,
            "id": plan.zid,
            "model": plan.model,
            "object": "chat.completion",
            "request_id": plan.zid,
            "usage": dict(sorted(usage.items())),
        }
        return Reply(200, dumps(answer), headers=self.headers(plan))


class CompatWire:
    """DashScope compatible mode (``/compatible-mode/v1``)."""

    stream_type = b"text/event-stream;charset=UTF-8"

    def headers(self, plan: Plan) -> list[Header]:
        return [(b"x-request-id", plan.rid.encode()), (b"x-dashscope-call-gateway", b"true")]

    def _chunk(self, plan: Plan, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {"choices": choices, "object": "chat.completion.chunk"}
        if plan.include_usage:
            chunk["usage"] = usage
        chunk.update(created=plan.created, system_fingerprint=None, model=plan.model, id=f"chatcmpl-{plan.rid}")
        return b"data: " + dumps(chunk) + b"\n\n"

    def _choice(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"delta": delta, "index": 0, "logprobs": None, "finish_reason": finish}

    def head(self, plan: Plan) -> bytes:
        return self._chunk(plan, [self._choice({"content": "", "role": "assistant"})])

    def token(self, plan: Plan, i: int) -> bytes:
        reasoning, text = plan.token(i)
        delta = {"content": None, "reasoning_content": text} if reasoning else {"content": text}
        return self._chunk(plan, [self._choice(delta)])

    def end(self, plan: Plan, emitted: int) -> bytes:
        finish = "content_filter" if plan.finish == "sensitive" else plan.finish
        out = self._chunk(plan, [self._choice({"content": ""}, finish)])
        if plan.include_usage:
            out += self._chunk(plan, [], _usage(plan, emitted))
        return out + _DONE

    def body(self, plan: Plan, emitted: int) -> Reply:
        reasoning, content = plan.text(emitted)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if plan.thinking:
            message["reasoning_content"] = reasoning
        finish = "content_filter" if plan.finish == "sensitive" else plan.finish
        answer = {
            "choices": [{"message": message, "finish_reason": finish, "index": 0, "logprobs": None}],
            "object": "chat.completion",
            "usage": _usage(plan, emitted),
            "created": plan.created,
            "system_fingerprint": None,
            "model": plan.model,
            "id": f"chatcmpl-{plan.rid}",
        }
        return Reply(200, dumps(answer), headers=self.headers(plan))
