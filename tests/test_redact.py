"""Secrets never reach a message or a log: monitor.redact masks keys and tokens and leaves ordinary text alone."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.redact import MASK, redact, redact_headers

OPENAI_KEY = "sk-proj-Q3x9vLm2Tb7Rk1Zp8Wc4Nd6Hf0Ys5Ja2Ue7Gi3Ko"
OPENROUTER_KEY = "sk-or-v1-" + "0f3a9c4e1b7d2a6e8c5f0b3d9e1a4c7f2b8d6e0a3c9f5b1d7e4a2c8f6b0d3e9a"
DASHSCOPE_KEY = "sk-8d2f6a1c9e4b7d3f0a5c2e8b6d1f4a9c"
ANTHROPIC_KEY = "sk-ant-api03-Zr4Xq8Lm1Vb6Tn3Kp9Wc2Hd7Fy0Gs5Ja"
ZHIPU_KEY = "3f9a1c7e5b2d8f4a6c0e9b1d7f3a5c2e.Xq8Lm1Vb6Tn3Kp9W"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInNpZ25fdHlwZSI6IlNJR04ifQ"
    ".eyJhcGlfa2V5IjoiM2Y5YTFjN2UiLCJleHAiOjE3NzA2MzExNDZ9"
    ".kP0sV2xQ9rT4mN7bC1dF8gH3jK6lZ5aW0eY2uI9oP4s"
)
ALL_KEYS = [OPENAI_KEY, OPENROUTER_KEY, DASHSCOPE_KEY, ANTHROPIC_KEY, ZHIPU_KEY, JWT]


@pytest.mark.parametrize("key", ALL_KEYS, ids=["openai", "openrouter", "dashscope", "anthropic", "zhipu", "jwt"])
@pytest.mark.parametrize(
    "template",
    [
        "{key}",
        "Authorization: Bearer {key}",
        "authorization: {key}",
        '{{"headers": {{"Authorization": "Bearer {key}"}}}}',
        "request failed (key {key}) at 12:00",
        "x-api-key: {key}",
        '{{"api_key": "{key}"}}',
        "GET https://example.invalid/v1/models?model=glm-4.7&api_key={key}&stream=true",
        "DASHSCOPE_API_KEY={key}",
        "error: invalid key '{key}'.",
    ],
)
def test_known_key_shapes_are_masked_wherever_they_appear(key: str, template: str) -> None:
    text = template.format(key=key)
    out = redact(text)
    assert key not in out
    assert MASK in out


def test_authorization_header_lines_lose_their_whole_value() -> None:
    text = "POST /v4/chat\nAuthorization: Basic dXNlcjpwYXNzd29yZA==\nCookie: acw_tc=76b20a1f; sid=abc\nAccept: */*"
    out = redact(text)
    assert "dXNlcjpwYXNzd29yZA" not in out
    assert "acw_tc" not in out and "sid=abc" not in out
    assert "Accept: */*" in out
    assert "POST /v4/chat" in out


def test_inline_bearer_token_of_any_shape_is_masked() -> None:
    out = redact('upstream said: {"detail": "token Bearer abc.def-ghi_jkl is expired"}')
    assert "abc.def-ghi_jkl" not in out
    assert "Bearer ***" in out


def test_password_in_url_is_masked_but_user_and_host_stay() -> None:
    out = redact("connect to postgresql://monitor:s3cr3t-pw@db.internal:5432/glm failed")
    assert "s3cr3t-pw" not in out
    assert "postgresql://monitor:***@db.internal:5432/glm" in out


@pytest.mark.parametrize(
    "text",
    [
        "glm-4.7",
        "glm-4.7-flash, glm-4.5-air, z-ai/glm-5, z-ai/glm-4.5-air:free, qwen-plus",
        "request_id 2026020917585695a7e8be40254c7c",
        "x-request-id: deab386b-2562-9a7b-b8fa-0ba9385a5c28",
        "chatcmpl-6ada9ed2-7f33-9de2-8bb0-78bd4035025a",
        "Usage limit reached for 5 hour. Your limit will reset at 2026-09-09 05:38:28",
        "Invalid API-key provided.",
        "Authorization Failure",
        "token-limit exceeded, see https://help.aliyun.com/zh/model-studio/error-code#token-limit",
        "To increase, visit https://openrouter.ai/settings/credits and upgrade to a paid account",
        "max_tokens=4096 temperature=0.7 top_p=0.9",
        "task-8d2f6a1c9e4b7d3f0a5c2e8b6d1f4a9c finished",
        "已达到 5 小时的使用上限。您的限额将在 2025-12-09 20:53:04 重置。",
        "gen-1778184802-C1BFjtT7NZc9ozE18LYG",
        "",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize("key", ALL_KEYS)
def test_redaction_is_idempotent(key: str) -> None:
    once = redact(f"Authorization: Bearer {key}\nurl=https://x.invalid/?api_key={key} {key}")
    assert redact(once) == once


def test_redact_headers_masks_credentials_case_insensitively_and_keeps_the_rest() -> None:
    headers = {
        "Authorization": f"Bearer {ZHIPU_KEY}",
        "x-api-key": ANTHROPIC_KEY,
        "Cookie": "acw_tc=76b20a1f17631997387148823e0b8f3a",
        "set-cookie": "acw_tc=76b20a1f;path=/;HttpOnly",
        "Proxy-Authorization": "Basic dXNlcjpwYXNzd29yZA==",
        "X-DashScope-Api-Key": DASHSCOPE_KEY,
        "content-type": "application/json",
        "x-request-id": "deab386b-2562-9a7b-b8fa-0ba9385a5c28",
        "date": "Mon, 08 Sep 2025 21:38:28 GMT",
        "location": f"https://example.invalid/callback?api_key={OPENAI_KEY}",
    }
    out = redact_headers(headers)
    assert list(out) == list(headers)  # names keep their spelling and order
    assert out["Authorization"] == "Bearer ***"
    assert out["Proxy-Authorization"] == "Basic ***"
    assert out["x-api-key"] == MASK
    assert out["Cookie"] == MASK
    assert out["set-cookie"] == MASK
    assert out["X-DashScope-Api-Key"] == MASK
    assert out["content-type"] == "application/json"
    assert out["x-request-id"] == "deab386b-2562-9a7b-b8fa-0ba9385a5c28"
    assert out["date"] == "Mon, 08 Sep 2025 21:38:28 GMT"
    assert OPENAI_KEY not in out["location"]
    flat = repr(out)
    for key in ALL_KEYS:
        assert key not in flat


def test_redact_headers_accepts_httpx_headers() -> None:
    headers = httpx.Headers({"Authorization": f"Bearer {OPENROUTER_KEY}", "X-Ratelimit-Remaining-Tokens": "9000"})
    out = redact_headers(headers)
    assert out == {"authorization": "Bearer ***", "x-ratelimit-remaining-tokens": "9000"}


class _BrokenMapping(Mapping[str, str]):
    """A mapping whose iteration fails, standing in for a misbehaving header object."""

    def __getitem__(self, key: str) -> str:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("broken")

    def __len__(self) -> int:
        return 1


def test_redact_headers_never_raises() -> None:
    assert redact_headers(_BrokenMapping()) == {}


@given(st.text())
def test_redact_never_raises_and_returns_text(text: str) -> None:
    assert isinstance(redact(text), str)


_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@given(
    prefix=st.text(),
    suffix=st.text(),
    body=st.text(alphabet=_ALNUM + "-_", min_size=20, max_size=80),
    zhipu_id=st.text(alphabet=_ALNUM, min_size=32, max_size=32),
    zhipu_secret=st.text(alphabet=_ALNUM, min_size=16, max_size=16),
)
def test_keys_embedded_in_arbitrary_text_never_survive(
    prefix: str, suffix: str, body: str, zhipu_id: str, zhipu_secret: str
) -> None:
    for key in (f"sk-{body}", f"{zhipu_id}.{zhipu_secret}"):
        assert key not in redact(f"{prefix} {key} {suffix}")
        assert key not in redact(f"{prefix}\nAuthorization: Bearer {key}\n{suffix}")


def test_credentials_in_query_parameters_are_masked():
    from monitor.redact import redact

    text = "GET https://x.example/v1/models?key=AbCdEf123456&alt=json&token=zzzzyyyyxxxx;sig=abcdef0123 failed"
    out = redact(text)
    assert "AbCdEf123456" not in out and "zzzzyyyyxxxx" not in out and "abcdef0123" not in out
    assert "?key=***&alt=json&token=***;sig=*** failed" in out


def test_the_exact_credential_a_request_carried_is_masked_by_value_whatever_its_shape():
    from monitor.redact import credentials, mask_values

    secret = "Zq8wNotAKnownShape94f1c2"
    found = credentials(
        [(b"Authorization", f"Bearer {secret}".encode()), (b"x-api-key", b"other-credential-7"), (b"accept", b"*/*")],
        b"key=query-credential-99&x=1",
    )
    assert found == (secret, "other-credential-7", "query-credential-99")
    text = f"Incorrect API key provided: {secret}; also other-credential-7 and Bearer {secret}"
    assert mask_values(text, found) == "Incorrect API key provided: ***; also *** and Bearer ***"
    # too short to mask by value without eating ordinary words
    assert credentials([("authorization", "Bearer abc")]) == ()
