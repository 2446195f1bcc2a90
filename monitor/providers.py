"""The built-in provider catalog: where each GLM API lives, how it speaks, authenticates and bills.

A *provider* is an API operator plus endpoint family (``zai``, ``bigmodel``, ``dashscope``, ``openrouter``,
``custom:<name>``). Each has one or more *endpoints* (base URL + dialect). Coding Plan inference endpoints may
never be probed: scripted calls to them can trigger fair-use blocks (code 1313); they are watched through
their quota API and captured real traffic instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from monitor.money import Currency
from monitor.usage import Dialect

Billing = Literal["pay_as_you_go", "subscription", "none"]
AuthStyle = Literal["bearer", "x-api-key"]

CODING_PLAN_PROBE_REFUSAL = (
    "Coding Plan inference endpoints are never probed: scripted calls to them can trigger a fair-use block "
    "(code 1313) on the account. GLM Monitor watches a Coding Plan through its quota API and the real traffic "
    "it captures instead; to probe the same models, add a pay-as-you-go target (e.g. provider 'zai' or 'bigmodel')."
)

# Chat request paths relative to an endpoint's base URL, by dialect.
CHAT_PATHS: MappingProxyType[Dialect, str] = MappingProxyType(
    {
        "openai": "/chat/completions",
        "anthropic": "/v1/messages",
        "dashscope": "/services/aigc/text-generation/generation",
    }
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One base URL of a provider and the dialect spoken there. ``route`` is the proxy's path prefix."""

    route: str
    base_url: str
    dialect: Dialect
    auth: AuthStyle = "bearer"

    @property
    def chat_url(self) -> str:
        """Full URL of the chat (or messages / generation) call on this endpoint."""
        return self.base_url.rstrip("/") + CHAT_PATHS[self.dialect]


@dataclass(frozen=True, slots=True)
class Provider:
    """A provider's facts. ``endpoints[0]`` is the one probes use.

    ``thinking_off`` is merged into a probe's request body to keep it cheap; ``quota_api`` is the URL of the
    provider's official quota endpoint, if any; ``probe_refusal`` says why a provider may not be probed.
    """

    id: str
    name: str
    endpoints: tuple[Endpoint, ...]
    billing: Billing
    currency: Currency | None
    api_key_env: str | None
    thinking_off: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    quota_api: str | None = None
    probe_refusal: str | None = None

    @property
    def probe_allowed(self) -> bool:
        """Whether the prober may send requests to this provider."""
        return self.probe_refusal is None

    @property
    def default_endpoint(self) -> Endpoint:
        """The endpoint probes use."""
        return self.endpoints[0]

    @property
    def is_custom(self) -> bool:
        """True for user-defined OpenAI-compatible servers (``custom:<name>``)."""
        return self.id.startswith("custom:")


def _frozen(d: dict[str, Any]) -> MappingProxyType[str, Any]:
    return MappingProxyType(d)


_ZHIPU_THINKING_OFF = _frozen({"thinking": {"type": "disabled"}})

BUILTIN_PROVIDERS: MappingProxyType[str, Provider] = MappingProxyType(
    {
        p.id: p
        for p in (
            Provider(
                id="zai",
                name="Z.ai (pay-as-you-go)",
                endpoints=(Endpoint("zai", "https://api.z.ai/api/paas/v4", "openai"),),
                billing="pay_as_you_go",
                currency="USD",
                api_key_env="ZAI_API_KEY",
                thinking_off=_ZHIPU_THINKING_OFF,
            ),
            Provider(
                id="zai-coding",
                name="Z.ai GLM Coding Plan",
                endpoints=(
                    Endpoint("zai-coding", "https://api.z.ai/api/coding/paas/v4", "openai"),
                    Endpoint("zai-anthropic", "https://api.z.ai/api/anthropic", "anthropic", auth="x-api-key"),
                ),
                billing="subscription",
                currency="USD",
                api_key_env="ZAI_CODING_API_KEY",
                thinking_off=_ZHIPU_THINKING_OFF,
                quota_api="https://api.z.ai/api/monitor/usage/quota/limit",
                probe_refusal=CODING_PLAN_PROBE_REFUSAL,
            ),
            Provider(
                id="bigmodel",
                name="BigModel.cn (Zhipu open platform)",
                endpoints=(Endpoint("bigmodel", "https://open.bigmodel.cn/api/paas/v4", "openai"),),
                billing="pay_as_you_go",
                currency="CNY",
                api_key_env="BIGMODEL_API_KEY",
                thinking_off=_ZHIPU_THINKING_OFF,
            ),
            Provider(
                id="bigmodel-coding",
                name="BigModel.cn GLM Coding Plan",
                endpoints=(
                    Endpoint("bigmodel-coding", "https://open.bigmodel.cn/api/coding/paas/v4", "openai"),
                    Endpoint(
                        "bigmodel-anthropic", "https://open.bigmodel.cn/api/anthropic", "anthropic", auth="x-api-key"
                    ),
                ),
                billing="subscription",
                currency="CNY",
                api_key_env="BIGMODEL_CODING_API_KEY",
                thinking_off=_ZHIPU_THINKING_OFF,
                quota_api="https://open.bigmodel.cn/api/monitor/usage/quota/limit",
                probe_refusal=CODING_PLAN_PROBE_REFUSAL,
            ),
            Provider(
                id="dashscope",
                name="Alibaba Cloud Model Studio (DashScope, mainland)",
                endpoints=(
                    Endpoint("dashscope", "https://dashscope.aliyuncs.com/compatible-mode/v1", "openai"),
                    Endpoint("dashscope-native", "https://dashscope.aliyuncs.com/api/v1", "dashscope"),
                ),
                billing="pay_as_you_go",
                currency="CNY",
                api_key_env="DASHSCOPE_API_KEY",
                thinking_off=_frozen({"enable_thinking": False}),
            ),
            Provider(
                id="dashscope-intl",
                name="Alibaba Cloud Model Studio (DashScope, international)",
                endpoints=(
                    Endpoint("dashscope-intl", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1", "openai"),
                    Endpoint("dashscope-intl-native", "https://dashscope-intl.aliyuncs.com/api/v1", "dashscope"),
                ),
                billing="pay_as_you_go",
                currency="USD",
                api_key_env="DASHSCOPE_INTL_API_KEY",
                thinking_off=_frozen({"enable_thinking": False}),
            ),
            Provider(
                id="openrouter",
                name="OpenRouter",
                endpoints=(Endpoint("openrouter", "https://openrouter.ai/api/v1", "openai"),),
                billing="pay_as_you_go",
                currency="USD",
                api_key_env="OPENROUTER_API_KEY",
                thinking_off=_frozen({"reasoning": {"enabled": False}}),
            ),
        )
    }
)


def custom_provider(
    name: str,
    base_url: str,
    *,
    api_key_env: str | None = None,
    currency: Currency | None = None,
    dialect: Dialect = "openai",
) -> Provider:
    """A user's server as provider ``custom:<name>``: OpenAI-compatible (vLLM, SGLang, a gateway), or speaking
    the anthropic or DashScope dialect (a company gateway in front of Claude-compatible endpoints).

    On an openai-dialect server thinking is turned off through the chat template, which is how vLLM and SGLang
    expose GLM's switch.
    """
    return Provider(
        id=f"custom:{name}",
        name=f"{name} (custom)",
        endpoints=(
            Endpoint(name, base_url.rstrip("/"), dialect, auth="x-api-key" if dialect == "anthropic" else "bearer"),
        ),
        billing="pay_as_you_go" if currency else "none",
        currency=currency,
        api_key_env=api_key_env,
        # vLLM's and SGLang's switch; other dialects' servers get no extra field they might refuse.
        thinking_off=_frozen({"chat_template_kwargs": {"enable_thinking": False}} if dialect == "openai" else {}),
    )


def with_base_url(provider: Provider, base_url: str) -> Provider:
    """``provider`` with its default endpoint moved to ``base_url`` (e.g. to point it at the simulator)."""
    first = replace(provider.endpoints[0], base_url=base_url.rstrip("/"))
    return replace(provider, endpoints=(first, *provider.endpoints[1:]))


def with_endpoint_url(provider: Provider, route: str, base_url: str) -> Provider:
    """``provider`` with its endpoint named ``route`` moved to ``base_url``; KeyError if it has no such endpoint."""
    if not any(ep.route == route for ep in provider.endpoints):
        raise KeyError(route)
    endpoints = tuple(
        replace(ep, base_url=base_url.rstrip("/")) if ep.route == route else ep for ep in provider.endpoints
    )
    return replace(provider, endpoints=endpoints)


def _norm(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")


def match_url(url: str, providers: Iterable[Provider]) -> tuple[Provider, Endpoint] | None:
    """The provider and endpoint whose base URL is a prefix of ``url`` (longest match wins), or None."""
    scheme, netloc, path = _norm(url)
    best: tuple[int, Provider, Endpoint] | None = None
    for provider in providers:
        for ep in provider.endpoints:
            s, n, p = _norm(ep.base_url)
            matches = (s, n) == (scheme, netloc) and (path == p or path.startswith(p + "/"))
            if matches and (best is None or len(p) > best[0]):
                best = (len(p), provider, ep)
    return None if best is None else (best[1], best[2])
