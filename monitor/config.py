"""Configuration: one TOML file, validated into ``Settings``.

The file is ``--config PATH``, else ``$GLM_MONITOR_CONFIG``, else ``./glm-monitor.toml``; no file means the
built-in defaults. Unknown keys are errors (typo protection). Every error names the file, the key path, the
bad value and what is expected, and is raised as ``ConfigError`` (the CLI exits with code 2). API keys never
appear in the file: it names the environment variable that holds each key (``api_key_env``).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from monitor.errors import ConfigError
from monitor.money import Currency
from monitor.pricing import PriceCatalog, PriceRule
from monitor.providers import BUILTIN_PROVIDERS, Provider, custom_provider, with_base_url, with_endpoint_url
from monitor.redact import redact

CONFIG_ENV = "GLM_MONITOR_CONFIG"
DEMO_CONFIG_FILE = "glm-monitor-demo.toml"
"""Left by ``glm-monitor demo`` in its folder, so that status, dashboard and proxy there see the demo."""
DEFAULT_CONFIG_FILE = "glm-monitor.toml"
ECB_DAILY_URL = "https://www.ecb.europa.eu/stats/eurofxref/eurofxref-daily.xml"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SECRET_KEY = re.compile(r"(api[_-]?key|secret|password|token)$", re.IGNORECASE)


def parse_duration(value: Any) -> float:
    """Seconds from ``30``, ``"30s"``, ``"5m"``, ``"1h"``, ``"1d"`` or ``"250ms"``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30s', '5m', '1h' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError("expected a duration like '30s', '5m', '1h' or a number of seconds")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds <= 0:
        raise ValueError("expected a positive duration")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("expected an IANA time zone name such as 'Asia/Tokyo' or 'UTC'") from exc
    return value


TimeZoneName = Annotated[str, BeforeValidator(lambda v: _check_zone(str(v)))]
EnvVarName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    """Where measurements are stored, for how long raw rows are kept, and the journal they pass through."""

    url: str = "sqlite:///./glm-monitor.db"
    retention_days: int = Field(90, ge=1)
    journal_dir: str | None = None
    fsync_interval: Duration = Field(1.0, gt=0, le=60)
    spool_path: str | None = None  # where versions before the journal spooled; a file left there is replayed
    max_queue: int = Field(100_000, ge=100)


class ProviderSettings(_Section):
    """Settings for a built-in provider, by id (``[providers.zai]``)."""

    api_key_env: EnvVarName | None = None
    base_url: str | None = None
    endpoints: dict[str, Annotated[str, Field(pattern=r"^https?://")]] = Field(default_factory=dict)
    max_concurrency: int | None = Field(None, ge=1)


class CustomProviderSettings(_Section):
    """A user's OpenAI-compatible server (vLLM, SGLang, ...), known as provider ``custom:<name>``."""

    base_url: str = Field(pattern=r"^https?://")
    dialect: Literal["openai", "anthropic", "dashscope"] = "openai"
    api_key_env: EnvVarName | None = None
    currency: Currency | None = None
    cost_per_hour: Decimal | None = Field(None, ge=0)
    max_concurrency: int | None = Field(None, ge=1)


class ProberSettings(_Section):
    """Defaults for every probe target."""

    interval: Duration = 300.0
    jitter: Duration = 15.0
    deadline: Duration = 60.0
    misfire_grace: Duration = 60.0
    probe_share: float = Field(0.10, gt=0, le=1)
    max_tokens: int = Field(16, ge=1, le=4096)
    prompt: str = "Reply with the single word: OK"
    default_concurrency: int = Field(1, ge=1)


class TargetSettings(_Section):
    """One (provider, model) to probe from this vantage."""

    provider: str
    model: str
    interval: Duration | None = None
    deadline: Duration | None = None
    max_tokens: int | None = Field(None, ge=1, le=4096)
    plan: str | None = None


class FreeTierPlan(_Section):
    """A free tier's caps (e.g. Flash models: concurrency 1, ~20 requests/minute, 50-250 requests/day).

    ``models``: the models whose requests count against it (default: those of the targets naming the plan,
    else every model of the provider).
    """

    kind: Literal["free_tier"]
    name: str
    provider: str
    models: list[str] | None = None
    requests_per_minute: int | None = Field(None, ge=1)
    requests_per_day: int | None = Field(None, ge=1)
    requests_per_5h: int | None = Field(None, ge=1)
    concurrency: int | None = Field(None, ge=1)


class CodingPlan(_Section):
    """A GLM Coding Plan subscription: 5-hour and weekly windows, per-model weights, peak multiplier."""

    kind: Literal["coding_plan"]
    name: str
    provider: Literal["zai-coding", "bigmodel-coding"] = "zai-coding"
    level: Literal["lite", "pro", "max"] = "lite"
    unit: Literal["prompts", "tokens"] = "prompts"
    five_hour_limit: int | None = Field(None, ge=1)
    weekly_limit: int | None = Field(None, ge=1)
    model_weights: dict[str, float] = Field(default_factory=dict)
    peak_multiplier: float = Field(1.0, ge=1)
    peak_hours: tuple[int, int] = (14, 18)
    peak_zone: TimeZoneName = "Asia/Shanghai"
    poll_quota: bool = True
    api_key_env: EnvVarName | None = None

    @field_validator("peak_hours")
    @classmethod
    def _hours(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not (0 <= v[0] <= 23 and 1 <= v[1] <= 24 and v[0] < v[1]):
            raise ValueError("expected [start_hour, end_hour] with 0 <= start < end <= 24, e.g. [14, 18]")
        return v


class TopUp(_Section):
    """Money added to a prepaid balance."""

    date: date
    amount: Decimal = Field(gt=0)


class PrepaidPlan(_Section):
    """A prepaid balance at a provider, drawn down by priced usage."""

    kind: Literal["prepaid"]
    name: str
    provider: str
    balance: Decimal = Field(ge=0)
    currency: Currency
    as_of: date
    topups: list[TopUp] = Field(default_factory=list)


class MonthlyBudget(_Section):
    """A spending limit per calendar month, across some or all providers."""

    kind: Literal["monthly_budget"]
    name: str
    amount: Decimal = Field(gt=0)
    currency: Currency = "JPY"
    providers: list[str] | None = None


_PLAN_KINDS = ("free_tier", "coding_plan", "prepaid", "monthly_budget")
Plan = Annotated[FreeTierPlan | CodingPlan | PrepaidPlan | MonthlyBudget, Field(discriminator="kind")]


class FxSettings(_Section):
    """Exchange rates used until real dated rates are stored, and the daily reference feed."""

    usd_jpy: Decimal = Field(Decimal("150"), gt=0)
    cny_jpy: Decimal = Field(Decimal("21"), gt=0)
    feed_url: str = ECB_DAILY_URL
    fetch_daily: bool = False


class DashboardSettings(_Section):
    """The Streamlit dashboard. Listening beyond 127.0.0.1 requires a password (from an env variable)."""

    host: str = "127.0.0.1"
    port: int = Field(8501, ge=1, le=65535)
    password_env: EnvVarName | None = None


def parse_size(value: Any) -> int:
    """A size in bytes: an integer, or a string such as "32MiB", "512KiB", "1GiB", "10MB", "4096"."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 32MiB")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B|B)?\s*", value, re.IGNORECASE)
        if match:
            unit = (match.group(2) or "B").upper()
            scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
            return int(match.group(1)) * scale[unit]
    raise ValueError(f"{value!r} is not a size: use bytes or a number with KiB, MiB or GiB, e.g. 32MiB")


Size = Annotated[int, BeforeValidator(parse_size)]


class ProxySettings(_Section):
    """The recording reverse proxy."""

    host: str = "127.0.0.1"
    port: int = Field(8787, ge=1, le=65535)
    token_env: EnvVarName = "GLM_MONITOR_PROXY_TOKEN"
    max_body: Size = Field(32 * 2**20, ge=1024)
    client_timeout: Duration = Field(60.0, gt=0)
    access_log: bool = False


class Settings(_Section):
    """Everything GLM Monitor can be told. ``source`` is the file it came from (None: built-in defaults)."""

    timezone: TimeZoneName = "Asia/Tokyo"
    vantage: str = Field("local", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    language: Literal["ja", "en"] = "ja"
    database: DatabaseSettings = DatabaseSettings()
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    custom: dict[str, CustomProviderSettings] = Field(default_factory=dict)
    prober: ProberSettings = ProberSettings()
    targets: list[TargetSettings] = Field(default_factory=list)
    plans: list[Plan] = Field(default_factory=list)
    prices: list[PriceRule] = Field(default_factory=list)
    fx: FxSettings = FxSettings()
    dashboard: DashboardSettings = DashboardSettings()
    proxy: ProxySettings = ProxySettings()
    source: Path | None = Field(None, exclude=True)

    def price_catalog(self) -> PriceCatalog:
        """The price catalog of this config: its ``[[prices]]`` overrides, days in its display ``timezone``."""
        return PriceCatalog(self.prices, zone=self.timezone)

    def catalog(self) -> dict[str, Provider]:
        """Every provider this config knows: built-ins (with overrides applied) and ``custom:<name>`` ones."""
        out: dict[str, Provider] = {}
        for pid, provider in BUILTIN_PROVIDERS.items():
            override = self.providers.get(pid)
            if override and override.base_url:
                provider = with_base_url(provider, override.base_url)
            for route, url in (override.endpoints if override else {}).items():
                if any(ep.route == route for ep in provider.endpoints):  # an unknown route: _cross_check says so
                    provider = with_endpoint_url(provider, route, url)
            if override and override.api_key_env:
                provider = _replace_key_env(provider, override.api_key_env)
            out[pid] = provider
        for name, c in self.custom.items():
            out[f"custom:{name}"] = custom_provider(
                name, c.base_url, api_key_env=c.api_key_env, currency=c.currency, dialect=c.dialect
            )
        return out

    def provider(self, provider_id: str) -> Provider:
        """The provider with this id; KeyError if the config does not know it."""
        return self.catalog()[provider_id]

    def plan(self, name: str) -> FreeTierPlan | CodingPlan | PrepaidPlan | MonthlyBudget:
        """The plan with this name; KeyError if there is none."""
        for p in self.plans:
            if p.name == name:
                return p
        raise KeyError(name)

    def api_key(self, provider_id: str, environ: Mapping[str, str] | None = None) -> str | None:
        """The API key for a provider, read from its environment variable (None when unset or empty)."""
        env = os.environ if environ is None else environ
        var = self.provider(provider_id).api_key_env
        return (env.get(var) or None) if var else None


def _replace_key_env(provider: Provider, var: str) -> Provider:
    from dataclasses import replace

    return replace(provider, api_key_env=var)


# ---------------------------------------------------------------------------------------------------------
# Loading and error messages


def config_path(
    explicit: str | os.PathLike[str] | None, environ: Mapping[str, str], *, demo_fallback: bool = True
) -> tuple[Path | None, str]:
    """Which file to read and why: (path or None for defaults, where the path came from). With no config file
    anywhere, the demo's (``./glm-monitor-demo.toml``, left by ``glm-monitor demo``) when ``demo_fallback``."""
    if explicit:
        return Path(explicit), "--config"
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]), f"${CONFIG_ENV}"
    default = Path(DEFAULT_CONFIG_FILE)
    if default.exists():
        return default, "default location"
    demo = Path(DEMO_CONFIG_FILE)
    if demo_fallback and demo.exists():
        return demo, "the demo's config, written by glm-monitor demo"
    return None, "built-in defaults"


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    demo_fallback: bool = True,
) -> Settings:
    """Read and validate the config (see module docstring for where it is looked for). ``demo_fallback``
    False ignores the demo's config file (``run`` must never take the demo's targets for real ones).

    Raises ``ConfigError`` with one message that names the file, each bad key path, its value and the fix.
    """
    env = os.environ if environ is None else environ
    file, why = config_path(path, env, demo_fallback=demo_fallback)
    if file is None:
        return Settings()
    if not file.is_file():
        raise ConfigError(f"{file}: config file not found (given by {why}); create it from glm-monitor.example.toml")
    try:
        # Decimal floats keep prices exact (0.1 stays 0.1, not 0.1000000000000000055...).
        data = tomllib.loads(file.read_text(encoding="utf-8"), parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read the config file: {exc}") from exc
    return settings_from_dict(data, source=file)


def settings_from_dict(data: Mapping[str, Any], *, source: Path | None = None) -> Settings:
    """Validate already-parsed config data; errors are reported against ``source``."""
    where = str(source) if source else "<config>"
    try:
        settings = Settings.model_validate(dict(data))
    except ValidationError as exc:
        lines = [_describe(err, data) for err in exc.errors(include_url=False)]
        raise ConfigError(_join(where, lines)) from None
    problems = _cross_check(settings)
    if problems:
        raise ConfigError(_join(where, problems))
    return settings.model_copy(update={"source": source})


def _join(where: str, lines: list[str]) -> str:
    if len(lines) == 1:
        return f"{where}: {lines[0]}"
    return f"{where}: {len(lines)} problems:\n" + "\n".join(f"  - {line}" for line in lines)


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += f'."{part}"' if out else f'"{part}"'
    return out or "(top level)"


def _show(value: Any, key: str) -> str:
    """A value for an error message, never a secret."""
    if _SECRET_KEY.search(key):
        return "<hidden>"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return redact(text)


def _describe(err: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    loc = _strip_tags(tuple(err["loc"]), data)
    path = _key_path(loc)
    last = str(loc[-1]) if loc else ""
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], data)
        hint = ""
        if _SECRET_KEY.search(last):
            hint = (
                "; secrets do not belong in the config file: put the key in an environment variable "
                "and give its name with api_key_env"
            )
        elif allowed:
            close = difflib.get_close_matches(last, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            hint += f" Allowed keys here: {', '.join(sorted(allowed))}"
        return f"{path}: unknown key{hint}"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx", {})
        tag_key = str(ctx.get("discriminator", "kind")).strip("'")
        expected = f"expected one of {', '.join(repr(k) for k in _PLAN_KINDS)}"
        if kind == "union_tag_not_found":
            return f"{_key_path((*loc, tag_key))}: required key is missing; {expected}"
        return f"{_key_path((*loc, tag_key))} = {_show(ctx.get('tag'), tag_key)}: {expected}"
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    expected = msg[0].lower() + msg[1:] if msg else "a valid value"
    return f"{path} = {_show(err.get('input'), last)}: {expected}"


def _strip_tags(loc: tuple[Any, ...], data: Mapping[str, Any]) -> tuple[Any, ...]:
    """Drop pydantic's union-tag and validator steps from an error location, keeping the user's real keys."""
    out: list[Any] = []
    node: Any = data
    for part in loc:
        in_mapping = isinstance(node, Mapping) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_mapping or in_list:
            out.append(part)
            node = node[part]
        elif isinstance(part, str) and (part in _PLAN_KINDS or "[" in part or "function" in part):
            continue
        else:
            out.append(part)
            node = None
    return tuple(out)


def _allowed_keys(loc: tuple[Any, ...], data: Mapping[str, Any]) -> list[str]:
    """Field names of the config section at ``loc``, for "did you mean" hints (best effort)."""
    tp: Any = Settings
    node: Any = data
    for part in loc:
        node = node[part] if isinstance(node, Mapping | list) else None
        tp = _member_for(tp, part, node)
        if tp is None:
            return []
    tp = _unwrap(tp, node)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [name for name in tp.model_fields if name != "source"]
    return []


def _unwrap(tp: Any, node: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0], node)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            inner = _unwrap(arg, node)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                kind = inner.model_fields.get("kind")
                if kind is None or (isinstance(node, Mapping) and node.get("kind") in typing.get_args(kind.annotation)):
                    return inner
        return None
    return tp


def _member_for(tp: Any, part: Any, node: Any) -> Any:
    tp = _unwrap(tp, node)
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str) and part in tp.model_fields:
        return tp.model_fields[part].annotation
    origin = typing.get_origin(tp)
    if origin in (list, tuple) and isinstance(part, int):
        return typing.get_args(tp)[0]
    if origin is dict:
        return typing.get_args(tp)[1]
    return None


def _cross_check(s: Settings) -> list[str]:
    """Checks that span keys: providers exist, Coding Plan endpoints are not probed, plans are named."""
    problems: list[str] = []
    catalog = s.catalog()
    known = ", ".join(sorted(catalog))
    for pid, override in s.providers.items():
        if pid not in BUILTIN_PROVIDERS:
            problems.append(
                f"providers.{pid}: unknown built-in provider; expected one of {', '.join(BUILTIN_PROVIDERS)} "
                f"(declare your own server under [custom.{pid}] instead)"
            )
            continue
        routes = [ep.route for ep in BUILTIN_PROVIDERS[pid].endpoints]
        for route in override.endpoints:
            if route not in routes:
                hint = difflib.get_close_matches(route, routes, n=1)
                problems.append(
                    f"providers.{pid}.endpoints.{route}: {pid} has no endpoint of this name"
                    + (f"; did you mean {hint[0]!r}?" if hint else "")
                    + f" Its endpoints: {', '.join(routes)}"
                )
    plan_names = [p.name for p in s.plans]
    for i, name in enumerate(plan_names):
        if plan_names.index(name) != i:
            problems.append(f"plans[{i}].name = {name!r}: another plan already has this name; names must be unique")
    for i, p in enumerate(s.plans):
        provider = getattr(p, "provider", None)
        if isinstance(provider, str) and provider not in catalog:
            problems.append(f"plans[{i}].provider = {provider!r}: unknown provider; expected one of {known}")
    for i, t in enumerate(s.targets):
        if t.provider not in catalog:
            problems.append(f"targets[{i}].provider = {t.provider!r}: unknown provider; expected one of {known}")
            continue
        refusal = catalog[t.provider].probe_refusal
        if refusal:
            problems.append(f"targets[{i}].provider = {t.provider!r}: {refusal}")
        if t.plan is not None and t.plan not in plan_names:
            problems.append(
                f"targets[{i}].plan = {t.plan!r}: no plan has this name; expected one of "
                f"{', '.join(plan_names) or '(none defined: add a [[plans]] table)'}"
            )
    return problems


def missing_api_keys(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """One message per provider that the config uses (targets, quota polling) whose key variable is unset."""
    env = os.environ if environ is None else environ
    catalog = settings.catalog()
    # (provider id, variable) -> why it is needed; a Coding Plan may poll its quota with a key of its own.
    needed: dict[tuple[str, str | None], str] = {}
    for t in settings.targets:
        needed.setdefault((t.provider, catalog[t.provider].api_key_env), "it has probe targets")
    for p in settings.plans:
        if isinstance(p, CodingPlan) and p.poll_quota:
            var = p.api_key_env or catalog[p.provider].api_key_env
            needed.setdefault((p.provider, var), f"plan {p.name!r} polls its quota")
    out = []
    for (pid, var), why in needed.items():
        if catalog[pid].is_custom and var is None:
            continue  # many self-hosted servers need no key
        if var is None or not env.get(var):
            where = f"providers.{pid}.api_key_env" if pid in BUILTIN_PROVIDERS else f"custom.{pid[7:]}.api_key_env"
            out.append(f"provider {pid!r} needs an API key ({why}): set the environment variable {var} (see {where})")
    return out


def require_api_keys(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """Raise ``ConfigError`` naming every provider whose API-key variable is missing."""
    missing = missing_api_keys(settings, environ)
    if missing:
        raise ConfigError(_join(str(settings.source or "<config>"), missing))
