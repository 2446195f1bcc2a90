"""Every endpoint of every provider can be pointed elsewhere (a company gateway, a test server), and custom
servers may speak any dialect: tested with the real anthropic SDK through `glm-monitor proxy` in its own process."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from monitor.config import settings_from_dict
from monitor.errors import ConfigError
from monitor.sim import ModelProfile, SimConfig, SimServer
from tests.cli_process import ProxyProcess

FAST = ModelProfile(ttft_s=0.0, token_s=0.0, output_tokens=5, cached_share=0.0)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    server = SimServer(SimConfig(models={"glm-4.7": FAST}, seed=9)).start()
    try:
        yield server
    finally:
        server.stop()


def test_an_unknown_endpoint_name_is_refused_with_the_names_there_are():
    with pytest.raises(ConfigError) as err:
        settings_from_dict({"providers": {"zai-coding": {"endpoints": {"zai-antropic": "http://127.0.0.1:1/x"}}}})
    text = str(err.value)
    assert "providers.zai-coding.endpoints.zai-antropic" in text and "did you mean 'zai-anthropic'" in text
    assert "zai-coding, zai-anthropic" in text


def test_each_endpoint_moves_on_its_own():
    settings = settings_from_dict(
        {"providers": {"zai-coding": {"endpoints": {"zai-anthropic": "https://gw.example/anthropic/"}}}}
    )
    eps = {ep.route: ep.base_url for ep in settings.catalog()["zai-coding"].endpoints}
    assert eps == {"zai-coding": "https://api.z.ai/api/coding/paas/v4", "zai-anthropic": "https://gw.example/anthropic"}


def _rows(db: Path) -> list[tuple[str, str, int, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT provider, outcome, input_tokens, output_tokens FROM usage_events ORDER BY id"
        ).fetchall()


def test_claude_code_traffic_follows_a_redirected_anthropic_endpoint_and_a_custom_anthropic_server(tmp_path, sim):
    db = tmp_path / "proxy.db"
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{db}"\njournal_dir = "{tmp_path / "journal"}"\n\n'
        f'[providers.zai-coding]\nendpoints = {{ zai-anthropic = "{sim.base_url}/api/anthropic" }}\n\n'
        f'[custom.claude-gw]\nbase_url = "{sim.base_url}/api/anthropic"\ndialect = "anthropic"\n'
    )
    proxy = ProxyProcess(config).start()
    try:
        for route in ("zai-anthropic", "claude-gw"):
            client = anthropic.Anthropic(base_url=f"{proxy.url}/{route}", api_key="sk-test-key")
            message = client.messages.create(
                model="glm-4.7", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
            )
            assert message.usage.output_tokens == 5
            with client.messages.stream(
                model="glm-4.7", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                assert stream.get_final_message().usage.output_tokens == 5
    finally:
        log = proxy.stop()
    assert f"/zai-anthropic/... -> {sim.base_url}/api/anthropic/..." in log
    assert f"/claude-gw/... -> {sim.base_url}/api/anthropic/..." in log
    rows = _rows(db)
    assert [(p, o, out) for p, o, _, out in rows] == [
        ("zai-coding", "ok", 5),
        ("zai-coding", "ok", 5),
        ("custom:claude-gw", "ok", 5),
        ("custom:claude-gw", "ok", 5),
    ]
    assert all(inp and inp > 0 for _, _, inp, _ in rows)


def test_claude_codes_count_tokens_calls_are_recorded_as_token_counts_and_burn_no_plan(tmp_path, sim):
    """Claude Code sends POST /v1/messages/count_tokens before many turns: recorded as what it is, never as a
    prompt of the Coding Plan (5 of them used to move a plan's `used` from 2 to 7)."""
    from monitor.config import load_settings
    from monitor.quota import quota_statuses
    from monitor.rollup import refresh_rollups
    from monitor.store import make_engine

    db = tmp_path / "proxy.db"
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{db}"\njournal_dir = "{tmp_path / "journal"}"\n\n'
        f'[providers.zai-coding]\nendpoints = {{ zai-anthropic = "{sim.base_url}/api/anthropic" }}\n\n'
        '[[plans]]\nkind = "coding_plan"\nname = "pro"\nprovider = "zai-coding"\nlevel = "pro"\nunit = "prompts"\n'
        "five_hour_limit = 600\nweekly_limit = 6000\npoll_quota = false\n"
    )
    proxy = ProxyProcess(config).start()
    try:
        client = anthropic.Anthropic(base_url=f"{proxy.url}/zai-anthropic", api_key="sk-test-key")
        messages = [{"role": "user", "content": "write a haiku about quotas"}]
        for _ in range(2):
            client.messages.create(model="glm-4.7", max_tokens=16, messages=messages)
        counts = [client.messages.count_tokens(model="glm-4.7", messages=messages) for _ in range(5)]
    finally:
        proxy.stop()
    assert all(c.input_tokens > 0 for c in counts)
    with sqlite3.connect(db) as conn:
        kinds = conn.execute("SELECT kind, outcome, cost_amount IS NULL FROM usage_events ORDER BY id").fetchall()
    assert [k for k, _, _ in kinds] == ["generation"] * 2 + ["token_count"] * 5
    assert {o for _, o, _ in kinds} == {"ok"}

    engine = make_engine(f"sqlite:///{db}")
    refresh_rollups(engine)
    five_hours = next(q for q in quota_statuses(engine, load_settings(config)) if q.window == "5 hours")
    engine.dispose()
    assert five_hours.used == 2


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/chat/completions", "generation"),
        ("/v1/messages", "generation"),
        ("/v1/messages/count_tokens", "token_count"),
        ("/v1/messages/count_tokens?beta=true", "token_count"),
        ("/services/aigc/text-generation/generation", "generation"),
        ("/embeddings", "embedding"),
        ("/images/generations", "image"),
        ("/services/aigc/text2image/image-synthesis", "image"),
        ("/models", "model_list"),
        ("/files", "other"),
    ],
)
def test_request_kinds_by_path(path, kind):
    from monitor.request_kind import request_kind

    assert request_kind(path) == kind
