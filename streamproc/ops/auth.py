"""Bearer-token authentication of the HTTP endpoint (``http_auth_token``/``_file``).

An ASGI middleware in front of every route: a request to a protected path needs
``Authorization: Bearer <token>``, or it gets ``401`` with ``WWW-Authenticate: Bearer``. The
token is compared as SHA-256 digests with :func:`hmac.compare_digest`, so the time taken says
nothing about how much of a guess was right, not even its length.

Protected: everything but the static dashboard files (``/``, ``dashboard.js``,
``dashboard.css``: the same bytes for everyone, no instance data; the page asks for the token
and sends it with its requests for ``/status`` and ``/topology``), ``/healthz`` and ``/readyz``
unless ``http_auth_probes``, and ``/metrics`` unless ``http_auth_metrics``. Unknown paths are
protected too (deny by default).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

import orjson
from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

STATIC = frozenset({"/", "/dashboard.js", "/dashboard.css"})
PROBES = frozenset({"/healthz", "/readyz"})
METRICS = frozenset({"/metrics"})
_BEARER = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*) *", re.ASCII | re.IGNORECASE)


@dataclass(frozen=True)
class AuthPolicy:
    """What the endpoint requires. ``token`` None: no authentication at all."""

    token: SecretStr | None = None
    probes: bool = False
    metrics: bool = False

    def open_paths(self) -> frozenset[str]:
        return STATIC | (frozenset() if self.probes else PROBES) \
            | (frozenset() if self.metrics else METRICS)


def _digest(text: bytes) -> bytes:
    return hashlib.sha256(text).digest()


def token_matches(expected: str, authorization: str | None) -> bool:
    """Whether an ``Authorization`` header value carries ``expected``, in time independent of
    the given token."""
    m = _BEARER.fullmatch(authorization or "")
    given = m.group(1).encode() if m else b""
    same = hmac.compare_digest(_digest(given), _digest(expected.encode()))
    return same and m is not None


class BearerAuth:
    """The middleware (pure ASGI: streaming responses and the lifespan pass untouched)."""

    def __init__(self, app: ASGIApp, policy: AuthPolicy) -> None:
        assert policy.token is not None
        self.app = app
        self._token = policy.token
        self._open = policy.open_paths()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open:
            await self.app(scope, receive, send)
            return
        values = Headers(scope=scope).getlist("authorization")
        if len(values) == 1 and token_matches(self._token.get_secret_value(), values[0]):
            await self.app(scope, receive, send)
            return
        # RFC 6750: no credentials get the bare challenge, wrong ones error="invalid_token".
        challenge = 'Bearer realm="streamproc"' + (
            ', error="invalid_token"' if values else "")
        body = orjson.dumps({"status": "unauthorized",
                             "error": "this path needs Authorization: Bearer <token>"})
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"cache-control", b"no-store"),
            (b"www-authenticate", challenge.encode()),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
