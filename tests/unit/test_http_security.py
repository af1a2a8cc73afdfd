"""The HTTP surface's own defences, on real sockets (127.0.0.1, no broker): the bearer token
per route and per switch, a timing-safe comparison, TLS, and the client that talks to other
instances (no redirects followed, answers capped in size and time)."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from streamproc.config import load_settings
from streamproc.errors import ConfigError
from streamproc.ops import auth
from streamproc.ops.auth import AuthPolicy, token_matches
from streamproc.ops.endpoint import parse_endpoint
from streamproc.ops.http import HttpContext, HttpServer, TlsFiles, build_app
from streamproc.ops.peers import PeerError, Peers
from streamproc.ops.prometheus import InstanceMetrics
from streamproc.ops.status import StatusBoard, starting_snapshot
from tests.local_http import json_answer, local_server, self_signed

TOKEN = "s3cret-token-0123456789"
ROUTES = ["/healthz", "/readyz", "/metrics", "/topology", "/status", "/", "/dashboard.js",
          "/dashboard.css", "/state/counts", "/nope"]


def _ctx(policy: AuthPolicy) -> HttpContext:
    board = StatusBoard(starting_snapshot("wc", "exactly_once", 0), stuck_after_s=10.0)
    return HttpContext(board=board, metrics=InstanceMetrics(board), settings=None,
                       topology={"application_id": "wc"}, auth=policy)


@pytest.fixture
def serve() -> Iterator[object]:
    servers: list[HttpServer] = []

    def start(policy: AuthPolicy, tls: TlsFiles | None = None) -> int:
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        async def state(_: object) -> PlainTextResponse:
            return PlainTextResponse("state")

        server = HttpServer(build_app(_ctx(policy), [lambda _c: [Route("/state/{s}", state)]]),
                            "127.0.0.1", 0, tls)
        servers.append(server)
        return server.start()

    yield start
    for s in servers:
        s.stop()


def _codes(port: int, headers: dict[str, str]) -> dict[str, int]:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
        return {r: c.get(r, headers=headers).status_code for r in ROUTES}


@pytest.mark.parametrize(("probes", "metrics"), [(False, False), (True, False), (False, True),
                                                 (True, True)])
def test_the_token_is_required_per_route_and_switch(serve, probes: bool,  # type: ignore[no-untyped-def]
                                                    metrics: bool) -> None:
    port = serve(AuthPolicy(SecretStr(TOKEN), probes=probes, metrics=metrics))
    # /readyz is 503 (starting) and /healthz 200 once let through.
    let_through = {"/healthz": 200, "/readyz": 503, "/metrics": 200, "/topology": 200,
                   "/status": 200, "/": 200, "/dashboard.js": 200, "/dashboard.css": 200,
                   "/state/counts": 200, "/nope": 404}
    static = {"/", "/dashboard.js", "/dashboard.css"}
    open_paths = static | ({"/healthz", "/readyz"} if not probes else set()) \
        | ({"/metrics"} if not metrics else set())
    refused = {r: (let_through[r] if r in open_paths else 401) for r in ROUTES}
    assert _codes(port, {}) == refused
    assert _codes(port, {"authorization": "Bearer wrong-token-0123456789"}) == refused
    assert _codes(port, {"authorization": f"Basic {TOKEN}"}) == refused
    assert _codes(port, {"authorization": f"Bearer {TOKEN}x"}) == refused
    assert _codes(port, {"authorization": f"Bearer {TOKEN}"}) == let_through
    assert _codes(port, {"authorization": f"bearer  {TOKEN}"}) == let_through  # RFC 7235
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
        r = c.get("/status")
        assert (r.status_code, r.headers["www-authenticate"], r.json()["status"]) == (
            401, 'Bearer realm="streamproc"', "unauthorized")
        r = c.get("/status", headers={"authorization": "Bearer nope-nope-nope-nope"})
        assert r.headers["www-authenticate"] == 'Bearer realm="streamproc", error="invalid_token"'
        assert TOKEN not in r.text
        # Two Authorization headers are refused, even if one is right.
        r = c.get("/status", headers=[("authorization", f"Bearer {TOKEN}"),
                                      ("authorization", "Bearer x")])
        assert r.status_code == 401


def test_without_a_token_everything_is_open(serve) -> None:  # type: ignore[no-untyped-def]
    port = serve(AuthPolicy())
    assert _codes(port, {})["/status"] == 200


def test_the_comparison_takes_no_shortcut(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[int, int]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    given = [None, "", "Bearer", "Bearer x", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN * 50}",
             f"Bearer {TOKEN}", f"Token {TOKEN}"]
    assert [token_matches(TOKEN, g) for g in given] == [False] * 6 + [True, False]
    # Every guess, malformed or not, of any length, is one comparison of two SHA-256 digests:
    # the time says neither how much of it matched nor how long the token is.
    assert compared == [(32, 32)] * len(given)


def test_token_settings_fail_fast(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("short\n")
    (tmp_path / "good").write_text(TOKEN + "\n")
    s = load_settings(http_auth_token_file=str(tmp_path / "good"))
    assert s.secret("http_auth_token") == TOKEN
    assert TOKEN not in repr(load_settings(http_auth_token=TOKEN))
    for kw, where, what in [
        ({"http_auth_token": "short"}, "http_auth_token (env STREAMPROC_HTTP_AUTH_TOKEN",
         "at least 16 characters"),
        ({"http_auth_token": "has space 0123456789"}, "http_auth_token", "at least 16"),
        ({"http_auth_token_file": str(tmp_path / "none")}, "http_auth_token_file",
         "is not a readable file"),
        ({"http_auth_token_file": str(tmp_path / "short")}, "settings",
         "http_auth_token_file: the token must be at least 16"),
        ({"http_auth_token": TOKEN, "http_auth_token_file": str(tmp_path / "good")},
         "settings", "http_auth_token and http_auth_token_file are both set"),
        ({"http_tls_cert_file": str(tmp_path / "good")}, "settings",
         "http_tls_cert_file and http_tls_key_file go together"),
        ({"http_tls_key_password": "x"}, "settings", "http_tls_key_password is set without"),
        ({"http_tls_cert_file": str(tmp_path / "good"), "http_tls_key_file":
          str(tmp_path / "good"), "http_advertised_url": "http://a:1"}, "settings",
         "http_advertised_url must be https://"),
        ({"http_registry_signing_key": "short"}, "http_registry_signing_key",
         "at least 16 characters"),
        ({"http_state_max_rows": "5000", "http_state_max_scan": "1000"}, "settings",
         "http_state_max_rows must not exceed http_state_max_scan"),
        ({"http_state_max_concurrent": "0"}, "http_state_max_concurrent", "greater than"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_settings(**kw)
        assert err.value.setting.startswith(where), kw
        assert what in err.value.problem, kw
        assert TOKEN not in str(err.value)


def test_tls(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = self_signed(tmp_path)
    port = serve(AuthPolicy(SecretStr(TOKEN)), TlsFiles(cert, key))
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=5) as c:
        r = c.get(f"https://127.0.0.1:{port}/status", headers={"authorization":
                                                               f"Bearer {TOKEN}"})
        assert r.status_code == 200
    with pytest.raises(httpx.HTTPError):  # no plain HTTP on a TLS port
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    with pytest.raises(httpx.ConnectError):  # an unknown certificate is not trusted
        httpx.get(f"https://127.0.0.1:{port}/healthz", timeout=5)

    # Instances proxying to each other verify the certificate against http_tls_ca_file.
    async def ask() -> int:
        peers = Peers(token=TOKEN, timeout_s=5, max_bytes=1 << 20, ca_file=cert)
        try:
            status, _ = await peers.get(parse_endpoint(f"https://127.0.0.1:{port}").url(
                "/status"), {})
            return status
        finally:
            await peers.aclose()

    assert asyncio.run(ask()) == 200
    other, _ = self_signed(tmp_path, "other")
    with pytest.raises(ConfigError) as err:
        HttpServer(build_app(_ctx(AuthPolicy()), []), "127.0.0.1", 0,
                   TlsFiles(other, key)).start()
    assert err.value.setting.startswith("http_tls_cert_file (env STREAMPROC_HTTP_TLS_CERT_FILE")
    assert "cannot load" in err.value.problem


def _get(url: str, *, max_bytes: int = 65_536, timeout_s: float = 5.0,
         token: str | None = None) -> tuple[int, bytes]:
    async def run() -> tuple[int, bytes]:
        peers = Peers(token=token, timeout_s=timeout_s, max_bytes=max_bytes)
        try:
            return await peers.get(httpx.URL(url), {"x-test": "1"})
        finally:
            await peers.aclose()

    return asyncio.run(run())


def test_a_redirect_from_another_instance_is_not_followed() -> None:
    with local_server(lambda _: json_answer(b'{"items": []}')) as target, \
            local_server(lambda p: (307, {"location": f"{target.url}{p}",
                                          "content-length": "0"}, [])) as redirecting:
        assert _get(redirecting.url + "/state/counts/k") == (307, b"")
        assert [s.path for s in redirecting.seen] == ["/state/counts/k"]
        assert target.seen == []


def test_answers_are_capped_in_size() -> None:
    big = b"x" * 70_000
    with local_server(lambda _: json_answer(big)) as declared, \
            local_server(lambda _: (200, {}, [big[:30_000], big[30_000:]])) as streamed:
        for server in (declared, streamed):
            with pytest.raises(PeerError) as err:
                _get(server.url + "/state/w")
            assert err.value.status == "owner_answer_too_large"
        assert _get(declared.url + "/x", max_bytes=70_000) == (200, big)


def test_a_compressed_answer_is_refused_and_the_token_is_sent() -> None:
    with local_server(lambda _: (200, {"content-encoding": "gzip", "content-length": "2"},
                                 [b"{}"])) as server:
        with pytest.raises(PeerError, match="compressed"):
            _get(server.url + "/state", token=TOKEN)
        seen = server.seen[0].headers
        assert (seen["authorization"], seen["accept-encoding"], seen["x-test"]) == (
            f"Bearer {TOKEN}", "identity", "1")


def test_a_peer_that_drips_is_cut_at_the_deadline() -> None:
    release = threading.Event()

    def drip(_: str) -> tuple[int, dict[str, str], list[bytes]]:
        release.wait(10)  # answers nothing until the test is over
        return json_answer(b"{}")

    with local_server(drip) as server:
        try:
            with pytest.raises(PeerError) as err:
                _get(server.url + "/state", timeout_s=0.3)
            assert (err.value.status, str(err.value)) == ("owner_unreachable",
                                                          "no answer within 0.3 s")
        finally:
            release.set()
    with pytest.raises(PeerError) as err:
        _get("http://127.0.0.1:9/state")  # nothing listens on the discard port
    assert err.value.status == "owner_unreachable"
