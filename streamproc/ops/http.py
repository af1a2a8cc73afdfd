"""The per-instance HTTP endpoint: a Starlette app served by uvicorn in one background thread.

Routes: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics`` (Prometheus),
``/topology`` (the compiled graph), ``/status`` (the dashboard's data) and ``/`` (the
dashboard). Handlers only read the :class:`~streamproc.ops.status.StatusBoard` and
prebuilt data, never the loop's objects, so a request can neither block nor race the
single-threaded consumer loop; they are ``async`` because each is a few microseconds of work
that is not worth a thread-pool hop.

More routes (e.g. queryable state under ``/state/...``) plug in through
:func:`register_routes` from their own module, without touching this one.

Security (docs/security.md, "HTTP surface"): an optional bearer token in front of every route
(streamproc/ops/auth.py) and TLS (``http_tls_cert_file``/``_key_file``), checked in the
caller's thread so a bad certificate fails the start naming the setting.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from streamproc.errors import ConfigError, StreamprocError
from streamproc.ops.auth import AuthPolicy, BearerAuth
from streamproc.ops.prometheus import CONTENT_TYPE, InstanceMetrics
from streamproc.ops.status import StatusBoard


@dataclass(frozen=True)
class HttpContext:
    """What route handlers may use: the snapshots, the instance's settings, and the queryable
    state (``query``: ops/query.py's QueryState, None when ``http_state_enabled`` is off),
    which serves reads of live stores without touching the loop's objects."""

    board: StatusBoard
    metrics: InstanceMetrics
    settings: Any
    topology: dict[str, Any]
    query: Any = None
    auth: AuthPolicy = field(default_factory=AuthPolicy)
    # Awaited on the server's event loop when it stops (e.g. closing a client's pool).
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=tuple)


RouteProvider = Callable[[HttpContext], Sequence[BaseRoute]]
_PROVIDERS: list[RouteProvider] = []


def register_routes(provider: RouteProvider) -> RouteProvider:
    """Register a function returning extra routes for every HTTP server built afterwards.
    Usable as a decorator in the module that serves them; that module must be imported
    before the instance starts."""
    if provider not in _PROVIDERS:
        _PROVIDERS.append(provider)
    return provider


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})


_ASSETS = {"dashboard.js": "text/javascript; charset=utf-8",
           "dashboard.css": "text/css; charset=utf-8"}


def build_app(ctx: HttpContext, providers: Sequence[RouteProvider] | None = None) -> Starlette:
    board = ctx.board
    package = resources.files("streamproc.ops")
    page = (package / "dashboard.html").read_bytes()
    assets = {name: (package / name).read_bytes() for name in _ASSETS}

    async def healthz(_: Request) -> Response:
        ok, body = board.health()
        return json_response({"status": "ok" if ok else "stuck", **body}, 200 if ok else 503)

    async def readyz(_: Request) -> Response:
        ok, body = board.readiness()
        return json_response({"status": "ready" if ok else "not_ready", **body},
                             200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    async def topology(_: Request) -> Response:
        return json_response(ctx.topology)

    async def status(_: Request) -> Response:
        snap = board.snapshot
        ok, ready = board.readiness()
        alive, health = board.health()
        return json_response({**snap.to_json(), "ready": ok, "readiness": ready,
                              "healthy": alive, "health": health})

    async def dashboard(_: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    async def asset(request: Request) -> Response:
        name = request.url.path.lstrip("/")
        return Response(assets[name], media_type=_ASSETS[name])

    routes: list[BaseRoute] = [
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
        Route("/topology", topology), Route("/status", status), Route("/", dashboard),
        *(Route(f"/{name}", asset) for name in _ASSETS),
    ]
    for provider in _PROVIDERS if providers is None else providers:
        routes.extend(provider(ctx))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for close in ctx.on_shutdown:
                await close()

    middleware = [Middleware(BearerAuth, policy=ctx.auth)] if ctx.auth.token else []
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    password: SecretStr | None = None

    def check(self) -> None:
        """Load the pair once here, so a wrong file or password fails the start in the
        caller's thread, naming the setting (uvicorn would fail in its own thread)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(self.cert, self.key, self.password.get_secret_value()
                                if self.password is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("http_tls_cert_file (env STREAMPROC_HTTP_TLS_CERT_FILE, flag "
                              "--http-tls-cert-file)", f"cannot load {self.cert} with "
                              f"{self.key}: {exc}") from None


class HttpServer:
    """uvicorn on a socket we bind ourselves: a taken port fails :meth:`start` in the caller's
    thread, and port 0 gives the kernel's free port, known before the first request."""

    def __init__(self, app: Starlette, host: str, port: int, tls: TlsFiles | None = None
                 ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._tls = tls
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 10.0) -> int:
        tls = self._tls
        if tls is not None:
            tls.check()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: h11 writes a response's head and body separately,
        # and on a kept-alive connection (instances proxying to each other) Nagle would hold
        # the body for the peer's delayed ACK (~40 ms per request).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise ConfigError("http_port (env STREAMPROC_HTTP_PORT, flag --http-port)",
                              f"cannot listen on {self._host}:{self._port}: {exc}") from None
        self._sock = sock
        port: int = sock.getsockname()[1]
        ssl_options: dict[str, Any] = {} if tls is None else {
            "ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key),
            "ssl_keyfile_password": tls.password.get_secret_value()
            if tls.password is not None else None}
        # lifespan "on": the app's shutdown hooks run on the server's loop when it stops.
        config = uvicorn.Config(self._app, loop="asyncio", http="h11", lifespan="on",
                                log_config=None, access_log=False, server_header=False,
                                timeout_graceful_shutdown=2, **ssl_options)
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name=f"streamproc-http-{port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise StreamprocError(f"the HTTP server on {self._host}:{port} did not start")
            time.sleep(0.005)
        return port

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None
