"""Requests from one instance to another (proxied ``/state`` lookups, ``scope=all`` fan-out).

The URL comes from the registry, which whoever can write ``{app}-instances`` can write to, so
the client trusts nothing it is told: it goes only where :class:`~streamproc.ops.endpoint.Endpoint`
says (the caller builds the URL from parsed parts), never follows a redirect, ignores proxy
environment variables and ``.netrc`` (``trust_env=False``: a peer is reached directly), asks
for no compression (a small compressed answer could inflate past any cap), reads at most
``max_bytes`` of the answer and gives the whole request one deadline, so a peer that drips
bytes cannot hold a request open.

One :class:`httpx.AsyncClient` per instance, used only on the HTTP server's event loop: its
pool keeps connections to the few other instances open between requests.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from pathlib import Path

import httpx


class PeerError(Exception):
    """No usable answer from another instance. ``status``: the answer's ``status`` field."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class Peers:
    def __init__(self, *, token: str | None, timeout_s: float, max_bytes: int,
                 ca_file: Path | None = None, max_connections: int = 64) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._token = token
        # Certificates of other instances are verified: against http_tls_ca_file when set,
        # else the system's trust store.
        verify = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._client = httpx.AsyncClient(
            follow_redirects=False, trust_env=False, verify=verify,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=16))

    async def get(self, url: httpx.URL, headers: Mapping[str, str]) -> tuple[int, bytes]:
        """``(status, body)`` of a GET; raises :class:`PeerError` when there is no answer,
        an answer over ``max_bytes``, or one that is compressed."""
        try:
            return await asyncio.wait_for(self._get(url, headers), self.timeout_s)
        except TimeoutError:
            raise PeerError("owner_unreachable",
                            f"no answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise PeerError("owner_unreachable", f"{type(exc).__name__}: {exc}") from None

    async def _get(self, url: httpx.URL, headers: Mapping[str, str]) -> tuple[int, bytes]:
        sent = {**headers, "accept": "application/json", "accept-encoding": "identity"}
        if self._token is not None:
            sent["authorization"] = f"Bearer {self._token}"
        async with self._client.stream("GET", url, headers=sent) as r:
            if r.headers.get("content-encoding", "identity").lower() != "identity":
                raise PeerError("owner_bad_answer", "the answer is compressed")
            declared = r.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise PeerError("owner_answer_too_large",
                                f"the answer is {declared} bytes, over {self.max_bytes}")
            body = bytearray()
            async for chunk in r.aiter_raw():
                body += chunk
                if len(body) > self.max_bytes:
                    raise PeerError("owner_answer_too_large",
                                    f"the answer is over {self.max_bytes} bytes")
            return r.status_code, bytes(body)

    async def aclose(self) -> None:
        await self._client.aclose()
