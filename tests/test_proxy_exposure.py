"""The proxy is safe to expose, tested from outside against `glm-monitor proxy` in its own process: a token on any
non-loopback address, 404s that name routes only, paths that cannot leave their route, forwarding headers a
client cannot forge, a request body limit answered before the body is read, slow clients timed out, and an
access log that never holds headers, queries or bodies."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli_process import ProxyProcess, free_port
from tests.fixture_server import FixtureServer, run_fixture_server

TOKEN = "proxy-token-5f1e9a0c"
FIXTURE = {"X-Fixture": "zai_nonstream_cached_reasoning"}
BODY = {"model": "glm-4.7", "messages": [{"role": "user", "content": "hi"}]}


def write_config(tmp_path: Path, upstream: str, extra: str = "") -> Path:
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "proxy.db"}"\njournal_dir = "{tmp_path / "journal"}"\n\n'
        f'[providers.zai]\nbase_url = "{upstream}/api/paas/v4"\n\n'
        f'[custom.internal]\nbase_url = "{upstream}/internal-gpu/v1"\n\n'
        f"[proxy]\n{extra}\n"
    )
    return config


def Proxy(config: Path, host: str, env: dict[str, str]) -> ProxyProcess:
    """A started proxy listening on ``host`` (the tests reach it on 127.0.0.1)."""
    proxy = ProxyProcess(config, host=host, env=env).start()
    return proxy


@pytest.fixture
def upstream() -> Iterator[FixtureServer]:
    with run_fixture_server() as server:
        yield server


def raw_status(port: int, path: str) -> int:
    """POST to ``path`` sent exactly as written (an HTTP client would resolve its dot segments first)."""
    body = json.dumps(BODY).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Fixture: {FIXTURE['X-Fixture']}\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        answer = sock.recv(64)
    return int(answer.split(b" ", 2)[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GLM_MONITOR_PROXY_TOKEN"}
    return {**env, **extra}


def _recorded(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "proxy.db") as conn:
        return conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]


def test_a_non_loopback_address_without_a_token_is_refused_before_anything_listens(tmp_path, upstream):
    config = write_config(tmp_path, upstream.url)
    port = free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor.cli",
            "--config",
            str(config),
            "proxy",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "GLM_MONITOR_PROXY_TOKEN" in done.stderr and "0.0.0.0" in done.stderr
    assert not (tmp_path / "proxy.db").exists()  # refused before anything started


def test_with_a_token_only_requests_carrying_it_are_forwarded(tmp_path, upstream):
    proxy = Proxy(write_config(tmp_path, upstream.url), "0.0.0.0", _env(GLM_MONITOR_PROXY_TOKEN=TOKEN))
    try:
        url = f"{proxy.url}/zai/chat/completions"
        auth = {"Authorization": "Bearer k", **FIXTURE}
        missing = httpx.post(url, json=BODY, headers=auth)
        wrong = httpx.post(url, json=BODY, headers={**auth, "X-Monitor-Token": "guess"})
        right = httpx.post(url, json=BODY, headers={**auth, "X-Monitor-Token": TOKEN})
    finally:
        proxy.stop()
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert "X-Monitor-Token" in missing.json()["error"]["message"]
    assert len(upstream.app.requests) == 1  # the refused ones never left the proxy
    assert upstream.app.requests[0].header("x-monitor-token") is None  # and the token is never forwarded
    assert _recorded(tmp_path) == 1


def test_unknown_paths_name_routes_not_upstreams_and_paths_cannot_leave_their_route(tmp_path, upstream):
    proxy = Proxy(write_config(tmp_path, upstream.url), "127.0.0.1", _env())
    try:
        unknown = httpx.get(f"{proxy.url}/nowhere/x")
        escapes = [
            raw_status(proxy.port, path)
            for path in ("/zai/../../x", "/zai/%2e%2E/%2e%2e/internal-gpu/v1/x", "/zai/a%2fb", "/zai/a%5Cb")
        ]
        dotted = raw_status(proxy.port, "/zai/./x/../chat/completions")
    finally:
        proxy.stop()
    assert unknown.status_code == 404
    body = unknown.json()
    assert set(body["routes"]) >= {"/zai", "/internal", "/bigmodel"}
    assert body["routes"]["/internal"] == {"provider": "custom:internal", "dialect": "openai"}
    assert upstream.url not in unknown.text and "internal-gpu" not in unknown.text and "api.z.ai" not in unknown.text
    assert escapes == [400] * 4
    assert dotted == 200
    assert [r.path for r in upstream.app.requests] == ["/api/paas/v4/chat/completions"]


def test_forwarding_headers_from_a_client_are_not_passed_on(tmp_path, upstream):
    proxy = Proxy(write_config(tmp_path, upstream.url), "127.0.0.1", _env())
    try:
        forged = {
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-For": "10.9.9.9",
            "X-Forwarded-Proto": "http",
            "Forwarded": "for=10.9.9.9;host=evil.example",
            "X-Real-IP": "10.9.9.9",
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "hop-by-hop by the Connection header",
            "X-Keep-Me": "an ordinary header",
        }
        r = httpx.post(f"{proxy.url}/zai/chat/completions", json=BODY, headers={**FIXTURE, **forged})
    finally:
        proxy.stop()
    assert r.status_code == 200
    seen = dict(upstream.app.requests[0].headers)
    assert not {
        "x-forwarded-host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "forwarded",
        "x-real-ip",
        "x-drop-me",
    } & set(seen)
    assert seen["x-keep-me"] == "an ordinary header"


def test_a_body_over_the_limit_is_answered_413_before_it_is_read(tmp_path, upstream):
    proxy = Proxy(write_config(tmp_path, upstream.url, 'max_body = "64KiB"'), "127.0.0.1", _env())
    try:
        big = json.dumps({**BODY, "pad": "x" * 100_000}).encode()
        declared = httpx.post(f"{proxy.url}/zai/chat/completions", content=big, headers=FIXTURE)

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, counted as it comes
            for start in range(0, len(big), 8192):
                yield big[start : start + 8192]

        chunked = httpx.post(f"{proxy.url}/zai/chat/completions", content=chunks(), headers=FIXTURE)
        # A client announcing 256 MiB gets its answer after sending only the head and 1 KiB of it.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(
                b"POST /zai/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 268435456\r\n\r\n" + b"{" * 1024
            )
            answer = sock.recv(4096)
        fits = httpx.post(f"{proxy.url}/zai/chat/completions", json=BODY, headers=FIXTURE)
    finally:
        proxy.stop()
    assert (declared.status_code, chunked.status_code, fits.status_code) == (413, 413, 200)
    assert "max_body" in declared.json()["error"]["message"]
    assert answer.startswith(b"HTTP/1.1 413")
    assert len(upstream.app.requests) == 1


def test_a_client_too_slow_to_send_its_body_is_timed_out(tmp_path, upstream):
    proxy = Proxy(write_config(tmp_path, upstream.url, 'client_timeout = "1s"'), "127.0.0.1", _env())
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
            sock.sendall(b"POST /zai/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            started = time.monotonic()
            answer = sock.recv(4096)
            waited = time.monotonic() - started
    finally:
        proxy.stop()
    assert answer.startswith(b"HTTP/1.1 408")
    assert waited < 10
    assert upstream.app.requests == []


def test_the_access_log_has_method_route_status_duration_and_app_only(tmp_path, upstream):
    proxy = Proxy(write_config(tmp_path, upstream.url, "access_log = true"), "127.0.0.1", _env())
    secret = "sk-secret-in-the-header-0123456789"
    try:
        r = httpx.post(
            f"{proxy.url}/zai/chat/completions?key=query-secret-42",
            json={**BODY, "messages": [{"role": "user", "content": "a private prompt"}]},
            headers={**FIXTURE, "Authorization": f"Bearer {secret}", "X-Monitor-App": "crm-bot"},
        )
        missing = httpx.get(f"{proxy.url}/nowhere")
        log = proxy.stop()
    except BaseException:
        proxy.stop()
        raise
    assert (r.status_code, missing.status_code) == (200, 404)
    lines = [line for line in log.splitlines() if "monitor.proxy.access" in line]
    assert len(lines) == 2
    assert lines[0].split("monitor.proxy.access: ")[1].startswith("POST /zai 200 ")
    assert lines[0].endswith("ms app=crm-bot")
    assert lines[1].split("monitor.proxy.access: ")[1].startswith("GET /- 404 ")
    for leak in (secret, "query-secret-42", "private prompt", "chat/completions"):
        assert leak not in log
