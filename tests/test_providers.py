"""The built-in provider catalog."""

from __future__ import annotations

import pytest

from monitor.providers import BUILTIN_PROVIDERS, custom_provider, match_url, with_base_url


def test_catalog_has_every_provider_family():
    assert set(BUILTIN_PROVIDERS) == {
        "zai",
        "zai-coding",
        "bigmodel",
        "bigmodel-coding",
        "dashscope",
        "dashscope-intl",
        "openrouter",
    }


@pytest.mark.parametrize(
    ("pid", "chat_url", "dialect", "currency"),
    [
        ("zai", "https://api.z.ai/api/paas/v4/chat/completions", "openai", "USD"),
        ("bigmodel", "https://open.bigmodel.cn/api/paas/v4/chat/completions", "openai", "CNY"),
        ("dashscope", "https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions", "openai", "CNY"),
        ("dashscope-intl", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions", "openai", "USD"),
        ("openrouter", "https://openrouter.ai/api/v1/chat/completions", "openai", "USD"),
    ],
)
def test_probeable_providers(pid, chat_url, dialect, currency):
    p = BUILTIN_PROVIDERS[pid]
    assert p.probe_allowed
    assert p.default_endpoint.chat_url == chat_url
    assert p.default_endpoint.dialect == dialect
    assert p.currency == currency
    assert p.billing == "pay_as_you_go"
    assert p.thinking_off, "every probeable provider knows how to turn thinking off"
    assert p.api_key_env


@pytest.mark.parametrize("pid", ["zai-coding", "bigmodel-coding"])
def test_coding_plans_are_never_probed_and_have_a_quota_api(pid):
    p = BUILTIN_PROVIDERS[pid]
    assert not p.probe_allowed
    assert "1313" in (p.probe_refusal or "")
    assert p.billing == "subscription"
    assert p.quota_api and p.quota_api.endswith("/api/monitor/usage/quota/limit")
    assert {e.dialect for e in p.endpoints} == {"openai", "anthropic"}
    anthropic = next(e for e in p.endpoints if e.dialect == "anthropic")
    assert anthropic.chat_url.endswith("/api/anthropic/v1/messages")


def test_dashscope_native_endpoint():
    native = BUILTIN_PROVIDERS["dashscope"].endpoints[1]
    assert native.dialect == "dashscope"
    assert native.chat_url == "https://dashscope.aliyuncs.com/api/v1/services/aigc/text-generation/generation"


def test_request_urls_are_matched_to_provider_and_endpoint():
    catalog = list(BUILTIN_PROVIDERS.values())
    p, e = match_url("https://api.z.ai/api/paas/v4/chat/completions", catalog)
    assert (p.id, e.route) == ("zai", "zai")
    p, e = match_url("https://api.z.ai/api/coding/paas/v4/chat/completions", catalog)
    assert (p.id, e.route) == ("zai-coding", "zai-coding")
    p, e = match_url("https://API.Z.AI/api/anthropic/v1/messages?beta=true", catalog)
    assert (p.id, e.dialect) == ("zai-coding", "anthropic")
    p, e = match_url("https://dashscope.aliyuncs.com/api/v1/services/aigc/text-generation/generation", catalog)
    assert (p.id, e.dialect) == ("dashscope", "dashscope")
    assert match_url("https://api.openai.com/v1/chat/completions", catalog) is None
    assert match_url("https://api.z.ai/api/paas/v40/x", catalog) is None


def test_custom_providers_and_base_url_overrides():
    vllm = custom_provider("a100", "http://10.0.0.5:8000/v1/")
    assert vllm.id == "custom:a100" and vllm.is_custom and vllm.probe_allowed
    assert vllm.default_endpoint.chat_url == "http://10.0.0.5:8000/v1/chat/completions"
    assert vllm.thinking_off["chat_template_kwargs"] == {"enable_thinking": False}
    moved = with_base_url(BUILTIN_PROVIDERS["zai"], "http://127.0.0.1:8900/api/paas/v4")
    assert moved.default_endpoint.chat_url == "http://127.0.0.1:8900/api/paas/v4/chat/completions"
    assert match_url("http://127.0.0.1:8900/api/paas/v4/chat/completions", [moved])[0].id == "zai"
