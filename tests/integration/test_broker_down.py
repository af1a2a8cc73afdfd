"""An instance started while no broker answers waits (one kafka.unreachable line per retry,
backing off), stops at once on SIGTERM, gives up only when told to (startup_timeout_ms), and
runs exactly once a broker appears on its bootstrap address."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from streamproc.kafka import io
from tests.harness import AppProcess, create_topics, unique, wait_event
from tests.integration.wordcount_check import (
    assert_exactly_once,
    expected_counts,
    make_lines,
    store_contents,
)

pytestmark = [pytest.mark.kafka]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Forwarder:
    """A TCP forwarder from ``127.0.0.1:port`` to ``target``: a broker appearing on the
    instance's bootstrap address. (Metadata answers name the real broker's address, so after
    bootstrapping the clients connect there directly.)"""

    def __init__(self, port: int, target: str) -> None:
        host, _, tport = target.rpartition(":")
        self._target = (host, int(tport))
        self._server = socket.create_server(("127.0.0.1", port))
        self._closed = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        self._server.close()
        for s in self._socks:
            with suppress(OSError):
                s.close()


@pytest.fixture
def down_address() -> Iterator[tuple[str, list[Forwarder]]]:
    """A bootstrap address nothing listens on (yet), and the forwarders started on it."""
    forwarders: list[Forwarder] = []
    yield f"127.0.0.1:{_free_port()}", forwarders
    for f in forwarders:
        f.close()


def _lines(app: AppProcess) -> list[dict[str, Any]]:
    """Every JSON log event so far (whole lines only: the child may be writing the last)."""
    text = app.log_text()
    return [json.loads(ln) for ln in text[:text.rfind("\n") + 1].splitlines()
            if ln.startswith("{")]


def _instance(tmp_path: Path, bootstrap: str, **settings: Any) -> tuple[AppProcess, str, str, str]:
    app_id, src, sink = unique("brokerdown"), unique("lines"), unique("counts")
    app = AppProcess("tests.apps:wordcount", bootstrap, tmp_path / "state", tmp_path / "app.log",
                     {"T_APP": app_id, "T_IN": src, "T_OUT": sink}, **settings)
    return app, app_id, src, sink


def test_waits_for_the_broker_then_runs_exactly(
        kafka: str, tmp_path: Path, down_address: tuple[str, list[Forwarder]]) -> None:
    address, forwarders = down_address
    app, app_id, src, sink = _instance(tmp_path, address)
    create_topics(kafka, (src, 2), (sink, 2))
    app.start()
    try:
        # It keeps waiting, saying so once per retry, with growing pauses.
        retries = wait_event(app, "kafka.unreachable", 30)
        deadline = time.monotonic() + 30
        while len(retries := app.events("kafka.unreachable")) < 3:
            assert app.alive and time.monotonic() < deadline, app.log_text()[-3000:]
            time.sleep(0.2)
        assert app.alive
        assert [(e["bootstrap"], e["attempt"], e["retry_in_s"]) for e in retries[:3]] == \
            [(address, 1, 0.5), (address, 2, 1.0), (address, 3, 2.0)]
        assert all("Connection refused" in e["error"] for e in retries), retries
        assert all(e["startup_timeout_ms"] is None for e in retries)
        # Those lines are all it says: no librdkafka reconnect flood, no error.
        said = _lines(app)
        assert [e["event"] for e in said if e["level"] != "info"] == \
            ["kafka.unreachable"] * sum(1 for e in said if e["event"] == "kafka.unreachable")

        real = kafka.split(",", 1)[0]
        forwarders.append(Forwarder(int(address.rsplit(":", 1)[1]), real))
        [reachable] = wait_event(app, "kafka.reachable", 30)
        assert reachable["attempts"] >= 4 and reachable["bootstrap"] == address, reachable
        wait_event(app, "instance.started", 60)
        lines = make_lines(800, seed=41)
        io.produce(kafka, src, ((None, ln.encode()) for ln in lines))
        assert io.wait_processed(kafka, app_id, [src, f"{app_id}-words-repartition"],
                                 timeout_s=120), app.log_text()[-3000:]
        assert app.terminate() == 0, app.log_text()[-3000:]
    finally:
        if app.alive:
            app.kill9()
    assert not [e for e in _lines(app) if e["level"] in ("error", "critical")]
    assert_exactly_once(kafka, sink, lines)
    assert store_contents(tmp_path / "state", app_id, "counts", 2) == dict(expected_counts(lines))


def test_sigterm_while_waiting_stops_at_once(
        tmp_path: Path, down_address: tuple[str, list[Forwarder]]) -> None:
    address, _ = down_address
    app, app_id, _, _ = _instance(tmp_path, address)
    app.start()
    try:
        wait_event(app, "kafka.unreachable", 30)
        started = time.monotonic()
        assert app.terminate(timeout_s=10) == 0, app.log_text()[-3000:]
        assert time.monotonic() - started < 5  # one probe (2 s) at most
    finally:
        if app.alive:
            app.kill9()
    [stopped] = app.events("instance.stopped")
    assert (stopped["app"], stopped["processed"], stopped["failed"]) == (app_id, 0, False)
    assert not [e for e in _lines(app) if e["level"] in ("error", "critical")]


def test_startup_timeout_gives_up_with_one_line_naming_the_setting(
        tmp_path: Path, down_address: tuple[str, list[Forwarder]]) -> None:
    address, _ = down_address
    app, _, _, _ = _instance(tmp_path, address, startup_timeout_ms=3000)
    app.start()
    try:
        assert app.wait(20) == 2, app.log_text()[-3000:]
    finally:
        if app.alive:
            app.kill9()
    errors = [e for e in _lines(app) if e["level"] in ("error", "critical")]
    assert [e["event"] for e in errors] == ["start.failed"], errors
    assert errors[0]["error"].startswith(
        f"Kafka at {address} did not answer within startup_timeout_ms=3000 ("), errors
    assert "STREAMPROC_STARTUP_TIMEOUT_MS" in errors[0]["error"]
    assert "Traceback" not in app.log_text()
