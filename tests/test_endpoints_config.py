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
