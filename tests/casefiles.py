"""Load the recorded provider responses in tests/fixtures (copied from ../shared/fixtures).

``NAME.http`` holds a status line, CRLF-separated lower-case headers, a blank line, then the body verbatim.
``cases.jsonl`` says what each response must parse and classify to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass(frozen=True)
class HttpFixture:
    """One recorded response: status code, headers (lower-case names, repeated names joined by ', '), body."""

    name: str
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Case:
    """One line of cases.jsonl with its response."""

    name: str
    provider: str
    dialect: str
    stream: bool
    request_model: str
    expect: dict[str, Any]
    response: HttpFixture


def load_http(name: str) -> HttpFixture:
    """Read ``tests/fixtures/NAME.http``."""
    raw = (FIXTURES / f"{name}.http").read_bytes()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return HttpFixture(name=name, status=status, headers=headers, body=body)


def load_cases() -> list[Case]:
    """Every case in cases.jsonl, in file order."""
    cases = []
    for line in (FIXTURES / "cases.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        cases.append(
            Case(
                name=d["name"],
                provider=d["provider"],
                dialect=d["dialect"],
                stream=d["stream"],
                request_model=d["request_model"],
                expect=d["expect"],
                response=load_http(d["name"]),
            )
        )
    return cases
