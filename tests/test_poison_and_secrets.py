"""Bad upstream answers, from outside: responses reporting impossible token counts, and an upstream that echoes
the caller's API key back in every error shape. `glm-monitor proxy` and `glm-monitor probe` run as a user runs
them; the key must appear nowhere afterwards (database, journal, logs, `status --json`, the dashboard), and a
poison answer must neither be priced nor stop the recording of the answers after it."""

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
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from monitor.outcomes import Outcome
from monitor.usage import UsageParser
from tests.fixture_server import serve_asgi

# A key of no recognisable shape (not sk-..., not <id>.<secret>, not a JWT): only masking by value can hide it.
KEY = "Zq8wNotAKnownShape94f1c2"

NORMAL = {
    "id": "chatcmpl-1",
    "model": "glm-4.7",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}


def _poison(**usage: Any) -> dict[str, Any]:
    return {**NORMAL, "usage": {**NORMAL["usage"], **usage}}


def _key_of(scope: dict[str, Any]) -> str:
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    query = parse_qs(scope.get("query_string", b"").decode())
    if "key" in query:
        return query["key"][0]
    if "x-api-key" in headers:
        return headers["x-api-key"]
    return headers.get("authorization", "").removeprefix("Bearer ").strip()


def _echo_cases(key: str) -> dict[str, tuple[int, str, bytes]]:
    """Every shape in which an upstream might hand the key back: status, content type, body."""
    as_json = "application/json"
    return {
        "openai-message": (
            401,
            as_json,
            json.dumps(
                {"error": {"message": f"Incorrect API key provided: {key}", "code": "invalid_api_key"}}
            ).encode(),
        ),
        "code-is-key": (401, as_json, json.dumps({"error": {"code": key, "message": "bad credentials"}}).encode()),
        "zhipu": (401, as_json, json.dumps({"code": 1000, "msg": f"身份验证失败 {key}", "success": False}).encode()),
        "plain": (400, "text/plain", f"invalid key {key}".encode()),
        "html": (502, "text/html", f"<html><body><h1>Bad gateway</h1><p>rejected {key}</p></body></html>".encode()),
        "ok-with-error": (
            200,
            as_json,
            json.dumps({"error": {"code": "1113", "message": f"{key} has no balance"}}).encode(),
        ),
        "sse-error": (
            200,
            "text/event-stream",
            f'data: {{"error":{{"code":"1302","message":"too many requests for key {key}"}}}}\n\n'.encode(),
        ),
    }


POISON = {
    "huge-int": _poison(prompt_tokens=2**63),
    "huge-float": _poison(prompt_tokens=1e300),
    "negative": _poison(completion_tokens=-5),
    "fraction": _poison(completion_tokens=2.5),
    "text": _poison(prompt_tokens="12"),
    "billion": _poison(prompt_tokens=10**9 + 1),
}


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers by the request's ``X-Case`` header: a poison usage, an echoed key, or a normal answer."""
    if scope["type"] != "http":
        return
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    case = headers.get("x-case", "openai-message")  # probes carry no case: they get the echo
    if case in POISON:
        status, kind, body = 200, "application/json", json.dumps(POISON[case]).encode()
    elif case == "normal":
        status, kind, body = 200, "application/json", json.dumps(NORMAL).encode()
    else:
        status, kind, body = _echo_cases(_key_of(scope))[case]
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind.encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def echo() -> Iterator[str]:
    with serve_asgi(upstream) as url:
        yield url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rig:
    """A config pointing zai at the echo upstream, a SQLite database and a journal in ``tmp_path``."""

    def __init__(self, tmp_path: Path, echo: str) -> None:
        self.db = tmp_path / "monitor.db"
        self.journal = tmp_path / "journal"
        self.config = tmp_path / "glm-monitor.toml"
        self.config.write_text(
            f'[database]\nurl = "sqlite:///{self.db}"\njournal_dir = "{self.journal}"\n\n'
            f'[providers.zai]\nbase_url = "{echo}/api/paas/v4"\n\n'
            '[[targets]]\nprovider = "zai"\nmodel = "glm-4.7"\n'
        )
        self.env = {**os.environ, "ZAI_API_KEY": KEY}
        self.outputs: list[str] = []

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "monitor.cli", "-v", "--config", str(self.config), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )
        self.outputs.append(done.stdout + done.stderr)
        return done

    def proxy(self) -> subprocess.Popen[str]:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "-v", "--config", str(self.config), "proxy", "--port", str(port)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                proc.port = port  # type: ignore[attr-defined]
                return proc
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the proxy did not start")

    def stop(self, proc: subprocess.Popen[str]) -> None:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
        self.outputs.append(out)
        assert proc.returncode == 0, out

    def rows(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.db) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM usage_events WHERE source = 'proxy' ORDER BY id")]

    def every_byte(self) -> str:
        """The database (every table, as SQL), every file in the journal directory, every output seen."""
        with sqlite3.connect(self.db) as conn:
            dump = "\n".join(conn.iterdump())
        files = "\n".join(p.read_bytes().decode("utf-8", "replace") for p in self.journal.glob("*") if p.is_file())
        return "\n".join([dump, files, *self.outputs])


def _post(port: int, case: str, *, how: str = "bearer") -> httpx.Response:
    headers = {"X-Case": case, "X-Monitor-App": case}
    url = f"http://127.0.0.1:{port}/zai/chat/completions"
    if how == "bearer":
        headers["Authorization"] = f"Bearer {KEY}"
    elif how == "x-api-key":
        headers["x-api-key"] = KEY
    else:
        url += f"?key={KEY}"
    body = {"model": "glm-4.7", "messages": [{"role": "user", "content": "hi"}], "stream": case == "sse-error"}
    return httpx.post(url, json=body, headers=headers, timeout=30)


def test_impossible_counts_are_noted_and_no_count_is_kept():
    for body in POISON.values():
        parser = UsageParser("openai", stream=False)
        parser.feed(json.dumps(body).encode())
        usage = parser.finish()
        assert usage.invalid is not None and usage.invalid.split("=")[0] in body["usage"]
    parser = UsageParser("openai", stream=False)
    parser.feed(json.dumps(NORMAL).encode())
    assert parser.finish().invalid is None


def test_poison_usage_is_recorded_unpriced_and_the_answers_after_it_are_recorded(tmp_path, echo):
    rig = Rig(tmp_path, echo)
    proc = rig.proxy()
    try:
        for case in [*POISON, "normal", "normal"]:
            assert _post(proc.port, case).status_code == 200  # type: ignore[attr-defined]
    finally:
        rig.stop(proc)
    rows = {r["app"]: r for r in rig.rows()}
    assert len(rig.rows()) == len(POISON) + 2
    for case in POISON:
        row = rows[case]
        assert row["outcome"] == str(Outcome.INVALID_USAGE)
        assert (row["input_tokens"], row["output_tokens"], row["cost_amount"], row["price_source"]) == (None,) * 4
        assert "impossible token count" in row["error_message"]
    first, wanted = "prompt_tokens=9223372036854775808", rows["huge-int"]["error_message"]
    assert first in wanted
    normal = [r for r in rig.rows() if r["app"] == "normal"]
    assert [(r["outcome"], r["input_tokens"], r["output_tokens"]) for r in normal] == [("ok", 12, 3)] * 2
    assert all(r["cost_amount"] is not None for r in normal)
    assert not list(rig.journal.glob("*.dead-letter.jsonl"))  # nothing reached the database to be refused


def test_a_key_echoed_in_any_error_shape_is_stored_and_shown_nowhere(tmp_path, echo, monkeypatch):
    rig = Rig(tmp_path, echo)
    proc = rig.proxy()
    try:
        for case in _echo_cases(KEY):
            for how in ("bearer", "x-api-key", "query"):
                response = _post(proc.port, case, how=how)  # type: ignore[attr-defined]
                assert KEY in response.text  # the client gets the upstream's answer unchanged
    finally:
        rig.stop(proc)
    rig.cli("probe", "--once", "--json")  # the prober sends the key itself and is answered with it
    rig.cli("probe", "--once")
    status = rig.cli("status", "--json")
    assert json.loads(status.stdout)  # a real report

    recorded = rig.rows()
    assert len(recorded) == 3 * len(_echo_cases(KEY))
    assert {r["outcome"] for r in recorded} >= {"auth_error", "client_error", "server_error", "quota_exhausted"}
    assert all(r["error_message"] for r in recorded)
    assert KEY not in rig.every_byte()

    # The dashboard's Probes page lists the probe's error: masked too (after the rollups a daemon keeps).
    from monitor.rollup import refresh_rollups
    from monitor.store import make_engine

    engine = make_engine(f"sqlite:///{rig.db}")
    refresh_rollups(engine)
    engine.dispose()
    from streamlit import config as st_config
    from streamlit.testing.v1 import AppTest

    from monitor.config import load_settings
    from monitor.dashboard_cmd import AS_OF_ENV, SETTINGS_ENV, app_path, dashboard_environ

    env = dashboard_environ(load_settings(rig.config), as_of=None, base={})
    for name in (SETTINGS_ENV, AS_OF_ENV):
        if name in env:
            monkeypatch.setenv(name, env[name])
        else:
            monkeypatch.delenv(name, raising=False)
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "127.0.0.1")  # as the launcher sets it: no password needed
    try:
        at = AppTest.from_file(str(app_path()), default_timeout=120)
        at.session_state["lang"] = "en"
        at.run()
        at.switch_page("views/probes.py").run()
    finally:
        st_config.set_option("server.address", before)
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == 2 and set(table["Error message"]) == {"Incorrect API key provided: ***"}
    shown = "\n".join(str(e.value) for kind in ("markdown", "caption", "dataframe") for e in at.get(kind))
    assert KEY not in shown and KEY not in table.to_csv()
