"""Remove secrets from text and headers before they reach a log, a message or the database.

``redact(text)`` masks API keys and tokens wherever they appear (``Authorization`` values, ``sk-...`` keys,
Zhipu ``<id>.<secret>`` keys, ``api_key=...`` parameters, JWTs, passwords in URLs) with ``***``.
``redact_headers(headers)`` masks the values of credential-bearing headers. Both are pure, fast and never raise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

__all__ = ["MASK", "credentials", "mask_values", "redact", "redact_headers"]

MASK = "***"

# Header lines ("Authorization: Bearer x", "Cookie: a=b") lose their whole value: a cookie or a Basic
# credential has no shape the inline patterns below could recognise.
_HEADER_LINE = re.compile(
    r"(?im)^([ \t]*(?:proxy-authorization|authorization|x-api-key|api-key|cookie|set-cookie)[ \t]*:[ \t]*)"
    r"(?![ \t]*\*\*\*[ \t]*$)(\S[^\r\n]*)"
)
# "Bearer <token>", "Basic <b64>" anywhere (JSON, log lines, exception text).
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)([ \t]+)(?!\*\*\*)[A-Za-z0-9._~+/=\-]{4,}")
# key=value / "key": "value" / key: value for names that carry credentials, also at the end of longer
# names (DASHSCOPE_API_KEY, x-goog-api-key: the match simply starts at the keyword; a leading [\w-]* would
# make long identifiers quadratic). The value ends at whitespace, a quote or a separator.
_KEY_VALUE = re.compile(
    r"(?i)((?:api[_\-]?key|access[_\-]?token|auth[_\-]?token|refresh[_\-]?token|"
    r"client[_\-]?secret|secret[_\-]?key|password|passwd)[\"']?[ \t]*[:=][ \t]*[\"']?)"
    r"(?!\*\*\*)(?!null\b)([^\s\"'&,;<>}\]]+)"
)
# OpenAI / OpenRouter (sk-or-v1-...) / DashScope / Anthropic (sk-ant-...) style keys.
_SK_KEY = re.compile(r"(?<![A-Za-z0-9_\-])sk-[A-Za-z0-9_\-]{16,}")
# Zhipu / Z.ai keys: a 32-character id, a dot, a 16-character secret.
_ZHIPU_KEY = re.compile(r"(?<![A-Za-z0-9.])[A-Za-z0-9]{32}\.[A-Za-z0-9]{16}(?![A-Za-z0-9])")
# JWTs (Zhipu signs short-lived tokens with the key): base64url '{"' header, then at least one more segment.
_JWT = re.compile(r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{8,}(?:\.[A-Za-z0-9_\-]+){1,2}")
# Passwords in URLs: scheme://user:password@host.
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)(?!\*\*\*@)[^/\s@]+@")
# Credentials in URL query parameters (?key=..., &token=..., signed URLs' sig=): names too short or common for
# _KEY_VALUE, so only after ? & or ;.
_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:key|token|apikey|api_key|access_token|auth|signature|sig|x-amz-signature)=)(?!\*\*\*)"
    r"([^&;\s\"'#<>]+)"
)


def _keep_group1(match: re.Match[str]) -> str:
    return match.group(1) + MASK


def _scheme(match: re.Match[str]) -> str:
    return match.group(1) + match.group(2) + MASK


def _url_password(match: re.Match[str]) -> str:
    return match.group(1) + MASK + "@"


def _whole(_: re.Match[str]) -> str:
    return MASK


_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (_HEADER_LINE, _keep_group1),
    (_AUTH_SCHEME, _scheme),
    (_KEY_VALUE, _keep_group1),
    (_SK_KEY, _whole),
    (_ZHIPU_KEY, _whole),
    (_JWT, _whole),
    (_URL_PASSWORD, _url_password),
    (_QUERY_SECRET, _keep_group1),
)

# Header names whose whole value is a credential; names matching _SECRET_NAME are masked as well.
_SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "set-cookie",
        "x-goog-api-key",
        "x-auth-token",
    }
)
_SECRET_NAME = re.compile(r"(?i)(api[_\-]?key|secret|passw|auth[_\-]?token|access[_\-]?token|security[_\-]?token)")
_SCHEME_PREFIX = re.compile(r"(?i)^\s*(bearer|basic|token)\s+")


def redact(text: str) -> str:
    """Return ``text`` with every recognisable secret replaced by ``***``; ordinary text is left as it is.

    Never raises: on any internal failure the whole text is masked rather than risk a leak.
    """
    try:
        if not isinstance(text, str):
            text = str(text)
        for pattern, replace in _RULES:
            text = pattern.sub(replace, text)
        return text
    except Exception:
        return MASK


MIN_SECRET_CHARS = 8
"""A credential shorter than this is not masked by value (it would mask ordinary words); shapes still apply."""

_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"api-key", b"x-goog-api-key", b"x-auth-token"})
_QUERY_CREDENTIAL = re.compile(r"(?i)(?:^|[?&;])(?:key|token|apikey|api_key|access_token)=([^&#]+)")


def credentials(headers: Iterable[tuple[bytes | str, bytes | str]], query: bytes | str = b"") -> tuple[str, ...]:
    """The credentials a request carries, to be masked by value wherever its answer is stored or shown: the values
    of ``Authorization`` (without its scheme), ``x-api-key`` and similar headers, and of ``key=``/``token=``
    query parameters. Never raises (an empty tuple at worst)."""
    found: list[str] = []
    try:
        for name, value in headers:
            raw_name = name.lower() if isinstance(name, bytes) else name.lower().encode("latin-1")
            if raw_name not in _CREDENTIAL_HEADERS:
                continue
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            text = _SCHEME_PREFIX.sub("", text).strip()
            if len(text) >= MIN_SECRET_CHARS:
                found.append(text)
        q = query.decode("latin-1") if isinstance(query, bytes) else query
        if q:
            found.extend(m for m in _QUERY_CREDENTIAL.findall(q) if len(m) >= MIN_SECRET_CHARS)
    except Exception:
        return tuple(found)
    return tuple(found)


def mask_values(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each of ``secrets`` (the exact credentials a request carried, as given
    by :func:`credentials`) masked, then :func:`redact` for every secret of a known shape. Never raises."""
    try:
        for secret in secrets:
            if len(secret) >= MIN_SECRET_CHARS and secret in text:
                text = text.replace(secret, MASK)
        return redact(text)
    except Exception:
        return MASK


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Copy ``headers`` with credential values masked (``Authorization: Bearer ***``); other values pass
    through :func:`redact`. Names keep their spelling. Never raises."""
    out: dict[str, str] = {}
    try:
        items = list(headers.items())
    except Exception:
        return out
    for name, value in items:
        try:
            key = str(name)
            text = str(value)
            if key.lower() in _SECRET_HEADERS or _SECRET_NAME.search(key):
                # Keep the scheme: "was it sent as Bearer?" is a useful thing to see when debugging auth.
                scheme = _SCHEME_PREFIX.match(text)
                out[key] = f"{scheme.group(1)} {MASK}" if scheme else MASK
            else:
                out[key] = redact(text)
        except Exception:
            continue
    return out
