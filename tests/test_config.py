"""Config loading: defaults, the example file, and errors that name the file, key, value and fix."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from monitor.cli import main
from monitor.config import (
    CONFIG_ENV,
    CodingPlan,
    FreeTierPlan,
    MonthlyBudget,
    PrepaidPlan,
    Settings,
    load_settings,
    missing_api_keys,
    parse_duration,
    require_api_keys,
)
from monitor.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "glm-monitor.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "glm-monitor.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(environ={})
    assert s.database.url == "sqlite:///./glm-monitor.db"
    assert s.timezone == "Asia/Tokyo"
    assert s.prober.interval == 300 and s.prober.probe_share == pytest.approx(0.10)
    assert s.fx.usd_jpy == 150 and s.fx.cny_jpy == 21
    assert s.dashboard.host == "127.0.0.1" and s.proxy.host == "127.0.0.1"
    assert s.source is None


def test_file_is_found_by_flag_then_env_then_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, 'vantage = "cwd"\n')
    other = tmp_path / "other.toml"
    other.write_text('vantage = "env"\n')
    flag = tmp_path / "flag.toml"
    flag.write_text('vantage = "flag"\n')
    assert load_settings(environ={}).vantage == "cwd"
    assert load_settings(environ={CONFIG_ENV: str(other)}).vantage == "env"
    assert load_settings(flag, environ={CONFIG_ENV: str(other)}).vantage == "flag"


def test_a_named_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.toml: config file not found \(given by --config\)"):
        load_settings(tmp_path / "missing.toml", environ={})


def _model_keys(model: type[BaseModel]) -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        if name == "source":
            continue
        keys.add(name)
        for tp in _models_in(field.annotation):
            keys |= _model_keys(tp)
    return keys


def _models_in(tp) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    out = []
    for arg in typing.get_args(tp):
        out += _models_in(arg)
    return out


def test_example_file_is_valid_and_documents_every_key():
    settings = load_settings(EXAMPLE, environ={})
    assert {type(p) for p in settings.plans} == {FreeTierPlan, CodingPlan, PrepaidPlan, MonthlyBudget}
    text = EXAMPLE.read_text()
    keys = _model_keys(Settings) | _model_keys(FreeTierPlan) | _model_keys(CodingPlan)
    keys |= _model_keys(PrepaidPlan) | _model_keys(MonthlyBudget)
    undocumented = sorted(k for k in keys if not re.search(rf"(^|[\s\[.#]){re.escape(k)}\b", text, re.M))
    assert undocumented == []


def test_prices_in_the_file_are_exact_decimals(tmp_path):
    path = write(
        tmp_path,
        """
[[prices]]
provider = "zai"
model = "glm-4.7"
currency = "USD"
effective_from = 2026-06-01
input_per_mtok = 0.1
output_per_mtok = 0.3
""",
    )
    rule = load_settings(path, environ={}).prices[0]
    assert str(rule.input_per_mtok) == "0.1" and str(rule.output_per_mtok) == "0.3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[prober]\ninterval = "fast"\n', r"prober\.interval = 'fast': expected a duration like '30s', '5m', '1h'"),
        ("[prober]\nprobe_share = 1.5\n", r"prober\.probe_share = Decimal\('1\.5'\): input should be less than"),
        ('timezone = "Asia/Tokio"\n', r"timezone = 'Asia/Tokio': expected an IANA time zone name"),
        (
            '[[targets]]\nprovider = "zai"\nmodel = "glm-4.7"\nintervall = "5m"\n',
            r"targets\[0\]\.intervall: unknown key; did you mean 'interval'\?",
        ),
        ('[databse]\nurl = "x"\n', r"databse: unknown key; did you mean 'database'\?"),
        (
            '[[plans]]\nkind = "free_tier"\nname = "f"\nprovider = "zai"\nrequests_per_dai = 5\n',
            r"plans\[0\]\.requests_per_dai: unknown key; did you mean 'requests_per_day'\?",
        ),
        (
            '[[plans]]\nkind = "gold"\nname = "x"\n',
            r"plans\[0\]\.kind = 'gold': expected one of 'free_tier', 'coding_plan', 'prepaid', 'monthly_budget'",
        ),
        ('[[targets]]\nmodel = "glm-4.7"\n', r"targets\[0\]\.provider: required key is missing"),
        (
            '[[targets]]\nprovider = "zaii"\nmodel = "glm-4.7"\n',
            r"targets\[0\]\.provider = 'zaii': unknown provider; expected one of .*zai",
        ),
        (
            '[[targets]]\nprovider = "zai"\nmodel = "glm-4.7"\nplan = "nope"\n',
            r"targets\[0\]\.plan = 'nope': no plan has this name",
        ),
        ('[providers.zia]\napi_key_env = "X"\n', r"providers\.zia: unknown built-in provider"),
        ('[[plans]]\nname = "x"\n', r"plans\[0\]\.kind: required key is missing; expected one of 'free_tier'"),
        (
            '[database]\nretention_days = "long"\n',
            r"database\.retention_days = 'long': input should be a valid integer",
        ),
    ],
)
def test_bad_values_name_the_file_key_value_and_fix(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert message.startswith(str(path))
    assert re.search(expected, message), message


def test_coding_plan_targets_are_refused_with_the_reason(tmp_path):
    path = write(tmp_path, '[[targets]]\nprovider = "zai-coding"\nmodel = "glm-4.7"\n')
    with pytest.raises(ConfigError, match=r"targets\[0\]\.provider = 'zai-coding': Coding Plan .* never probed.*1313"):
        load_settings(path, environ={})


def test_all_problems_are_reported_at_once(tmp_path):
    path = write(tmp_path, '[prober]\ninterval = "x"\njitter = "y"\n')
    with pytest.raises(ConfigError, match=r"2 problems:\n  - prober\.interval .*\n  - prober\.jitter"):
        load_settings(path, environ={})


def test_syntax_errors_name_the_file_and_line(tmp_path):
    path = write(tmp_path, 'vantage = "a"\ntimezone = \n')
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: not valid TOML: .*line 2"):
        load_settings(path, environ={})


def test_secrets_in_the_file_are_refused_without_echoing_them(tmp_path, capsys):
    secret = "sk-or-v1-0123456789abcdef0123456789abcdef"
    path = write(tmp_path, f'[providers.zai]\napi_key = "{secret}"\n')
    assert main(["--config", str(path), "config"]) == 2
    err = capsys.readouterr().err
    assert "providers.zai.api_key: unknown key" in err
    assert "environment variable" in err
    assert secret not in err
    assert str(path) in err.replace("\n", "")


def test_missing_api_key_variables_are_named_per_provider(tmp_path):
    path = write(
        tmp_path,
        """
[providers.openrouter]
api_key_env = "MY_OR_KEY"

[custom.box]
base_url = "http://127.0.0.1:9/v1"

[[targets]]
provider = "zai"
model = "glm-4.7"

[[targets]]
provider = "openrouter"
model = "z-ai/glm-4.6"

[[targets]]
provider = "custom:box"
model = "glm-4.5-air"

[[plans]]
kind = "coding_plan"
name = "pro"
api_key_env = "CODING_KEY"
""",
    )
    settings = load_settings(path, environ={})
    missing = missing_api_keys(settings, {"ZAI_API_KEY": "x"})
    assert len(missing) == 2
    assert (
        "provider 'openrouter' needs an API key (it has probe targets): set the environment variable MY_OR_KEY"
        in (missing[0])
    )
    assert "provider 'zai-coding'" in missing[1] and "CODING_KEY" in missing[1]
    with pytest.raises(ConfigError, match="MY_OR_KEY"):
        require_api_keys(settings, {})
    require_api_keys(settings, {"ZAI_API_KEY": "a", "MY_OR_KEY": "b", "CODING_KEY": "c"})
    assert settings.api_key("openrouter", {"MY_OR_KEY": "secret"}) == "secret"


def test_custom_and_overridden_providers_are_in_the_catalog(tmp_path):
    path = write(
        tmp_path,
        """
[providers.zai]
base_url = "http://127.0.0.1:8900/api/paas/v4"

[custom.vllm]
base_url = "http://10.0.0.5:8000/v1/"
""",
    )
    catalog = load_settings(path, environ={}).catalog()
    assert catalog["zai"].default_endpoint.chat_url == "http://127.0.0.1:8900/api/paas/v4/chat/completions"
    vllm = catalog["custom:vllm"]
    assert vllm.default_endpoint.chat_url == "http://10.0.0.5:8000/v1/chat/completions"
    assert vllm.billing == "none" and vllm.probe_allowed


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), (90, 90), ("250ms", 0.25)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_cli_reports_a_bad_file_with_exit_code_2(tmp_path, capsys):
    path = write(tmp_path, '[prober]\ninterval = "soon"\n')
    assert main(["--config", str(path), "run"]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "prober.interval = 'soon'" in err and "expected a duration" in err
