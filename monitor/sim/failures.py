"""Error answers of the simulated provider, in each dialect's exact envelope.

Flavours: ``zhipu`` (openai dialect on Zhipu / Z.ai paths: ``{"error":{"code":"1302","message":...}}``),
``compat`` (DashScope compatible mode: ``{"error":{"code","message","param","type"},"request_id"}``),
``anthropic`` (Z.ai's Anthropic endpoint: ``{"type":"error","error":{"type":"1308",...},"request_id"}``, the
Zhipu code in ``error.type``) and ``dashscope`` (native: ``{"code","message","request_id"}``). Wording and
statuses follow tests/fixtures where a recording exists; the rest follows the providers' error-code pages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from monitor.sim.state import CST

__all__ = ["NGINX_502", "Flavour", "Header", "Reply", "dumps", "render_error"]

Flavour = Literal["zhipu", "compat", "anthropic", "dashscope"]
Header = tuple[bytes, bytes]

JSON_TYPE = b"application/json"
ZHIPU_HEADERS: list[Header] = [(b"server", b"nginx/1.21.6"), (b"vary", b"Origin")]

# nginx's own 502 page (src/http/ngx_http_special_response.c), CRLF line ends as nginx sends them.
NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.21.6</center>\r\n</body>\r\n</html>\r\n"
)

_ZHIPU: dict[str, tuple[int, str]] = {
    "1000": (401, "Authorization Failure"),
    "1113": (429, "Insufficient balance or no resource package. Please recharge."),
    "1211": (400, "Unknown Model, please check the model code."),
    "1214": (400, "Invalid request parameters."),
    "1301": (
        400,
        "系统检测到输入或生成内容可能包含不安全或敏感内容，请您避免输入易产生敏感内容的提示语，感谢您的配合。",
    ),
    "1302": (
        429,
        "High concurrency usage of this API, please reduce concurrency or contact customer service to increase limits",
    ),
    "1303": (
        429,
        "High frequency usage of this API, please reduce frequency or contact customer service to increase limits",
    ),
    "1304": (
        429,
        "Daily call limit for this API reached, please contact customer service to increase limits",
    ),
    "1305": (429, "The service may be temporarily overloaded, please try again later"),
    "1308": (429, "Usage limit reached for 5 hour. Your limit will reset at {reset}"),
    "500": (500, "Internal Error"),
}
# Failure kinds that have no Zhipu code of their own, answered with the nearest one.
_ZHIPU_ALIAS = {"auth": "1000", "429-anthropic-rate_limit_error": "1303", "529": "1305", "sensitive": "1301"}

# Anthropic's own error types, for the kinds that are not Zhipu business codes.
_ANTHROPIC_OWN: dict[str, tuple[int, str, str]] = {
    "auth": (401, "authentication_error", "invalid x-api-key"),
    "500": (500, "api_error", "Internal server error"),
    "429-anthropic-rate_limit_error": (429, "rate_limit_error", "Rate limit exceeded, please retry later"),
    "529": (529, "overloaded_error", "Overloaded"),
    "1214": (400, "invalid_request_error", "Invalid request parameters."),
}

# (status, code, message) for DashScope; compatible mode uses (status, code, type, message).
_DASHSCOPE: dict[str, tuple[int, str, str]] = {
    "auth": (401, "InvalidApiKey", "Invalid API-key provided."),
    "1211": (400, "InvalidParameter", "Model not exist."),
    "1214": (400, "InvalidParameter", "Invalid request parameters."),
    "1302": (429, "Throttling", "Requests throttling triggered."),
    "1303": (429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."),
    "1304": (403, "AllocationQuota.FreeTierOnly", "The free tier of the model has been exhausted."),
    "1305": (503, "ServiceUnavailable", "Service temporarily unavailable, please try again later."),
    "1113": (400, "Arrearage", "Access denied, please make sure your account is in good standing."),
    "1301": (400, "DataInspectionFailed", "Input data may contain inappropriate content."),
    "sensitive": (400, "DataInspectionFailed", "Output data may contain inappropriate content."),
    "500": (
        500,
        "InternalError",
        "An internal error has occured, please try again later or contact service support.",
    ),
}
_DASHSCOPE_ALIAS = {"1308": "1304", "429-anthropic-rate_limit_error": "1303", "529": "1305"}

_COMPAT: dict[str, tuple[int, str, str, str]] = {
    "auth": (401, "invalid_api_key", "invalid_request_error", "Incorrect API key provided. "),
    "1211": (
        404,
        "model_not_found",
        "invalid_request_error",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    "1214": (400, "invalid_parameter_error", "invalid_request_error", "Invalid request parameters."),
    "1302": (429, "limit_requests", "limit_requests", "Requests rate limit exceeded, please try again later."),
    "1303": (429, "limit_requests", "limit_requests", "Requests rate limit exceeded, please try again later."),
    "1304": (
        403,
        "AllocationQuota.FreeTierOnly",
        "AllocationQuota.FreeTierOnly",
        "The free tier of the model has been exhausted.",
    ),
    "1305": (
        503,
        "ServiceUnavailable",
        "ServiceUnavailable",
        "Service temporarily unavailable, please try again later.",
    ),
    "1113": (
        400,
        "Arrearage",
        "Arrearage",
        "Access denied, please make sure your account is in good standing.",
    ),
    "1301": (
        400,
        "data_inspection_failed",
        "data_inspection_failed",
        "Input data may contain inappropriate content.",
    ),
    "sensitive": (
        400,
        "data_inspection_failed",
        "data_inspection_failed",
        "Output data may contain inappropriate content.",
    ),
    "500": (
        500,
        "internal_error",
        "internal_error",
        "An internal error has occured, please try again later or contact service support.",
    ),
}


@dataclass
class Reply:
    """A complete, non-streamed HTTP answer."""

    status: int
    body: bytes
    content_type: bytes = JSON_TYPE
    headers: list[Header] = field(default_factory=list)


def dumps(obj: object) -> bytes:
    """Compact JSON with raw UTF-8, as the providers send it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def render_error(
    flavour: Flavour,
    kind: str,
    *,
    model: str = "",
    zid: str = "",
    rid: str = "",
    reset_at: datetime | None = None,
    detail: str | None = None,
) -> Reply:
    """The answer for failure ``kind`` (a failure kind, ``1211`` unknown model, ``1214`` bad request) in
    ``flavour``. ``zid`` / ``rid`` are the request's Zhipu / DashScope ids; ``reset_at`` the end of a 1308
    window; ``detail`` replaces the message of a 1214."""
    if kind == "502":
        headers = [(b"server", b"nginx/1.21.6")]
        return Reply(502, NGINX_502, b"text/html", headers)
    if flavour == "dashscope":
        status, code, message = _DASHSCOPE[_DASHSCOPE_ALIAS.get(kind, kind)]
        if kind == "1214" and detail:
            message = detail
        body = dumps({"code": code, "message": message, "request_id": rid})
        return Reply(status, body, headers=_dashscope_headers(rid))
    if flavour == "compat":
        key = {"1308": "1304", "429-anthropic-rate_limit_error": "1303", "529": "1305"}.get(kind, kind)
        status, code, type_, message = _COMPAT[key]
        message = detail if kind == "1214" and detail else message.format(model=model)
        error = {"code": code, "message": message, "param": None, "type": type_}
        return Reply(status, dumps({"error": error, "request_id": rid}), headers=_dashscope_headers(rid))
    if flavour == "anthropic" and kind in _ANTHROPIC_OWN:
        status, type_, message = _ANTHROPIC_OWN[kind]
        if kind == "1214" and detail:
            message = detail
        body = dumps({"type": "error", "error": {"type": type_, "message": message}, "request_id": zid})
        return Reply(status, body)
    code = _ZHIPU_ALIAS.get(kind, kind)
    status, message = _ZHIPU[code]
    if code == "1308":
        reset = (reset_at or datetime.now(CST)).astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")
        message = message.format(reset=reset)
    elif code == "1214" and detail:
        message = detail
    if flavour == "anthropic":
        body = dumps({"type": "error", "error": {"type": code, "message": message}, "request_id": zid})
        return Reply(status, body)
    return Reply(status, dumps({"error": {"code": code, "message": message}}), headers=list(ZHIPU_HEADERS))


def _dashscope_headers(rid: str) -> list[Header]:
    return [(b"x-request-id", rid.encode()), (b"x-dashscope-call-gateway", b"true")]
