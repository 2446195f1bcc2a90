"""The proxy's route table: one path prefix per provider endpoint, and where a request under it goes.

``/zai/chat/completions?x=1`` goes to ``https://api.z.ai/api/paas/v4/chat/completions?x=1``: the first path
segment names an endpoint (``Endpoint.route``; a custom provider ``custom:<name>`` has route ``<name>``), and the
rest of the path and the query are appended to that endpoint's base URL byte for byte, as the client sent them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from monitor.providers import Endpoint, Provider


@dataclass(frozen=True, slots=True)
class Route:
    """One route prefix: the provider and endpoint behind it and the parts of its base URL."""

    name: str
    provider: Provider
    endpoint: Endpoint
    scheme: str
    host: str
    port: int
    base_path: bytes

    @property
    def origin(self) -> tuple[str, str, int]:
        """(scheme, host, port): requests to one origin share its idle connections."""
        return (self.scheme, self.host, self.port)

    @property
    def origin_url(self) -> str:
        """``scheme://host:port`` (an IPv6 host in brackets), to which ``target`` is appended."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def target(self, rest: bytes, query: bytes) -> bytes:
        """The upstream request target for ``rest`` (the path after the prefix, raw) and the raw query."""
        path = self.base_path + rest if rest else self.base_path or b"/"
        return path + b"?" + query if query else path


_ENCODED_DOT = re.compile(rb"%2e", re.IGNORECASE)
_UNSAFE = re.compile(rb"%2f|%5c|\\", re.IGNORECASE)


def normalise_path(rest: bytes) -> bytes | None:
    """``rest`` (the raw path after a route's prefix) with its ``.`` and ``..`` segments resolved (``%2e`` counts
    as a dot), or None when it would climb above the route's base path or hides a separator (``%2f``, ``%5c``,
    a backslash) that an upstream might decode into one. Other segments keep their spelling byte for byte."""
    if b"." not in rest and b"%" not in rest and b"\\" not in rest:
        return rest
    if _UNSAFE.search(rest):
        return None
    out: list[bytes] = []
    dot_last = False
    for segment in rest.split(b"/")[1:]:
        plain = _ENCODED_DOT.sub(b".", segment) if b"%" in segment else segment
        dot_last = plain in (b".", b"..")
        if plain == b"..":
            if not out:
                return None
            out.pop()
        elif plain != b".":
            out.append(segment)
    if not out:
        return b"/" if rest else b""
    return b"/" + b"/".join(out) + (b"/" if dot_last else b"")


def make_route(provider: Provider, endpoint: Endpoint) -> Route:
    """The route of one endpoint; ValueError when its base URL is not an absolute http(s) URL."""
    parts = urlsplit(endpoint.base_url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"endpoint {endpoint.route!r}: base URL {endpoint.base_url!r} is not an http(s) URL")
    port = parts.port or (443 if scheme == "https" else 80)
    return Route(
        name=endpoint.route,
        provider=provider,
        endpoint=endpoint,
        scheme=scheme,
        host=parts.hostname,
        port=port,
        base_path=parts.path.rstrip("/").encode("ascii"),
    )


class RouteTable:
    """Every route of a provider catalog, looked up by a request's raw path."""

    def __init__(self, providers: Iterable[Provider]) -> None:
        self.routes: dict[bytes, Route] = {}
        for provider in providers:
            for endpoint in provider.endpoints:
                route = make_route(provider, endpoint)
                # First one wins: a custom provider may not shadow a built-in route of the same name.
                self.routes.setdefault(route.name.encode("ascii", "replace"), route)

    @classmethod
    def from_catalog(cls, catalog: Mapping[str, Provider]) -> RouteTable:
        """The table of ``Settings.catalog()`` (built-ins first, then custom providers)."""
        builtin = [p for p in catalog.values() if not p.is_custom]
        custom = [p for p in catalog.values() if p.is_custom]
        return cls([*builtin, *custom])

    def match(self, raw_path: bytes) -> tuple[Route, bytes] | None:
        """The route named by the first segment of ``raw_path`` and the rest of the path (raw), or None."""
        name, slash, rest = raw_path[1:].partition(b"/")
        route = self.routes.get(name)
        if route is None:
            return None
        return route, slash + rest

    def not_found_body(self, raw_path: bytes) -> bytes:
        """The JSON body of the 404 for an unknown route: every route's name, provider and dialect (never where
        a route goes: an internal server's address is nobody's business outside; ``glm-monitor proxy`` prints it)."""
        listing = {
            f"/{r.name}": {"provider": r.provider.id, "dialect": r.endpoint.dialect} for r in self.routes.values()
        }
        body = {
            "error": {
                "type": "unknown_route",
                "message": (
                    f"no proxy route for {raw_path.decode('latin-1')[:200]!r}: the path must start with one of the "
                    "routes below, e.g. base_url=http://127.0.0.1:8787/zai"
                ),
            },
            "routes": listing,
        }
        return json.dumps(body, ensure_ascii=False).encode("utf-8")
