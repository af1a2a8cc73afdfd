"""The HTTP front of ``--workers N``: one address for the probes, ``/metrics`` and ``/status``
of every worker of this machine (streamproc/workers.py).

A container has one health check and one scrape target; with N workers behind it, the front
answers for all of them on ``http_port`` and asks each worker on its own port (loopback):

- ``/healthz``: 200 unless a worker's own ``/healthz`` says 503, one has been unreachable for
  a minute while running, or one failed for good. A worker waiting out its restart backoff
  does not fail it: the supervisor is doing its job, and a liveness probe that restarted the
  whole container for it would only add a second restart.
- ``/readyz``: 200 when every worker runs and is ready.
- ``/metrics``: every worker's families merged, each sample labelled ``worker="i"``, plus the
  supervisor's ``streamproc_workers``, ``streamproc_worker_up`` and
  ``streamproc_worker_restarts_total``.
- ``/status``: per worker its process facts and its own ``/status``.

The front keeps the workers' security: the same bearer token policy (it sends the token on to
them) and, with ``http_tls_cert_file``, HTTPS, reaching the workers over HTTPS too and trusting
exactly that certificate (they all serve it; the loopback address is not in it).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamproc.ops.auth import AuthPolicy, BearerAuth
from streamproc.ops.http import HttpServer, TlsFiles
from streamproc.ops.prometheus import CONTENT_TYPE

UNREACHABLE_GRACE_S = 60.0  # a running worker that does not answer this long is unhealthy
_TIMEOUT_S = 3.0
_MAX_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class WorkerView:
    """What the front knows of one worker (a copy: the supervisor's thread owns the real one)."""

    index: int
    port: int | None
    state: str  # starting | running | backoff | done | failed
    restarts: int
    pid: int | None
    running_for_s: float
    last_exit: int | None


def loopback(host: str) -> str:
    """Where a worker bound to ``host`` is reached from this machine."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
    return wildcard.get(host, host)


def merge_metrics(texts: dict[int, str]) -> list[Metric]:
    """Every worker's metric families as one set: a family's samples from all workers, each
    with a ``worker`` label (the first worker's help text and type stand for the family)."""
    merged: dict[str, Metric] = {}
    for index, text in sorted(texts.items()):
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:
            # A worker's answer that does not parse (cut short as it died) is left out whole,
            # rather than failing the scrape of every other worker.
            continue
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation,
                                                    family.type, family.unit)
            elif into.type != family.type:
                continue  # two workers of different versions disagree: keep the first
            into.samples.extend(s._replace(labels={**s.labels, "worker": str(index)})
                                for s in family.samples)
    return list(merged.values())


def supervisor_metrics(views: Sequence[WorkerView]) -> list[Metric]:
    workers = GaugeMetricFamily("streamproc_workers", "Worker processes configured on this "
                                "machine (--workers).", value=len(views))
    up = GaugeMetricFamily("streamproc_worker_up", "1 while the worker process runs.",
                           labels=["worker"])
    restarts = CounterMetricFamily("streamproc_worker_restarts", "Times the supervisor "
                                   "started the worker again after it died.", labels=["worker"])
    for v in views:
        up.add_metric([str(v.index)], 1.0 if v.state == "running" else 0.0)
        restarts.add_metric([str(v.index)], float(v.restarts))
    return [workers, up, restarts]


class _Families:
    """A prometheus-client collector over families computed per scrape."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(families: Iterable[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


class Front:
    """The front's server; ``views`` returns the workers as they are now."""

    def __init__(self, settings: Any, views: Callable[[], Sequence[WorkerView]]) -> None:
        self._settings = settings
        self._views = views
        tls = None
        if settings.http_tls_cert_file is not None:
            tls = TlsFiles(settings.http_tls_cert_file, settings.http_tls_key_file,
                           settings.http_tls_key_password)
        self._tls = tls
        self._scheme = "https" if tls is not None else "http"
        self._host = loopback(settings.http_host)
        token = settings.secret("http_auth_token")
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client: httpx.AsyncClient | None = None
        self._server = HttpServer(self._app(), settings.http_host, settings.http_port, tls)

    def start(self) -> int:
        return self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def _verify(self) -> ssl.SSLContext | bool:
        if self._tls is None:
            return False
        # Pinning: the workers serve the front's own certificate, so that one certificate is
        # the trust anchor (partial chain: also when it is a leaf issued by some CA).
        ctx = ssl.create_default_context(cafile=str(self._tls.cert))
        ctx.check_hostname = False
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return ctx

    async def _get(self, view: WorkerView, path: str) -> tuple[int | None, bytes, str]:
        """(status, body, error) of a worker's ``path``; status None when it did not answer."""
        if view.port is None or view.state != "running":
            return None, b"", view.state
        if self._client is None:
            self._client = httpx.AsyncClient(verify=self._verify(), trust_env=False,
                                             follow_redirects=False, timeout=_TIMEOUT_S)
        host = f"[{self._host}]" if ":" in self._host else self._host
        url = f"{self._scheme}://{host}:{view.port}{path}"
        try:
            async with self._client.stream("GET", url, headers=self._headers) as answer:
                body = bytearray()
                async for chunk in answer.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_BYTES:
                        return None, b"", f"answer over {_MAX_BYTES} bytes"
                return answer.status_code, bytes(body), ""
        except httpx.HTTPError as exc:
            return None, b"", f"{type(exc).__name__}: {exc}"

    async def _each(self, path: str) -> list[tuple[WorkerView, tuple[int | None, bytes, str]]]:
        views = list(self._views())
        answers = await asyncio.gather(*(self._get(v, path) for v in views))
        return list(zip(views, answers, strict=True))

    def _app(self) -> Starlette:
        async def healthz(_: Request) -> Response:
            rows, ok = [], True
            for v, (status, _body, error) in await self._each("/healthz"):
                bad = v.state == "failed" or (status is not None and status != 200) or (
                    status is None and v.state == "running"
                    and v.running_for_s > UNREACHABLE_GRACE_S)
                ok = ok and not bad
                rows.append({"worker": v.index, "state": v.state, "healthz": status,
                             **({"error": error} if error and v.state == "running" else {})})
            return _json({"status": "ok" if ok else "unhealthy", "workers": rows},
                         200 if ok else 503)

        async def readyz(_: Request) -> Response:
            rows, ok = [], True
            for v, (status, _body, _error) in await self._each("/readyz"):
                ok = ok and status == 200
                rows.append({"worker": v.index, "state": v.state, "readyz": status})
            return _json({"status": "ready" if ok else "not_ready", "workers": rows},
                         200 if ok else 503)

        async def metrics(_: Request) -> Response:
            answers = await self._each("/metrics")
            texts = {v.index: body.decode("utf-8", "replace")
                     for v, (status, body, _e) in answers if status == 200}
            families = [*supervisor_metrics([v for v, _ in answers]), *merge_metrics(texts)]
            return Response(render(families), media_type=CONTENT_TYPE)

        async def status(_: Request) -> Response:
            rows = []
            for v, (code, body, failure) in await self._each("/status"):
                own: Any = None
                error = failure
                if code == 200:
                    try:
                        own = orjson.loads(body)
                    except orjson.JSONDecodeError as exc:
                        error = f"not JSON: {exc}"
                elif code is not None:
                    error = f"HTTP {code}"
                rows.append({"worker": v.index, "state": v.state, "pid": v.pid,
                             "port": v.port, "restarts": v.restarts, "last_exit": v.last_exit,
                             "status": own, **({"error": error} if error else {})})
            return _json({"workers": rows})

        @asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            yield
            if self._client is not None:
                await self._client.aclose()

        token = self._settings.secret("http_auth_token")
        policy = AuthPolicy(token=SecretStr(token) if token is not None else None,
                            probes=self._settings.http_auth_probes,
                            metrics=self._settings.http_auth_metrics)
        middleware = [Middleware(BearerAuth, policy=policy)] if policy.token else []
        routes = [Route("/healthz", healthz), Route("/readyz", readyz),
                  Route("/metrics", metrics), Route("/status", status)]
        return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})
