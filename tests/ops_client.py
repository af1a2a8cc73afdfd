"""Talking to an instance's HTTP endpoint from tests: requests, Prometheus samples, waiting for
a condition, and finding the port a ``--http-port 0`` instance picked."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from streamproc.runtime.app import Application
from streamproc.service import monitor_of

T = TypeVar("T")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url: str) -> tuple[int, Any]:
    code, body = get(url)
    return code, json.loads(body)


def scrape(base: str) -> Samples:
    code, body = get(base + "/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def by_label(samples: Samples, name: str, label: str, **where: str) -> dict[str, float]:
    """Samples of ``name`` keyed by one label's value, over label sets matching ``where``."""
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        d = dict(labels)
        if n == name and all(d.get(k) == val for k, val in where.items()):
            out[d[label]] = out.get(d[label], 0.0) + v
    return out


def wait_until(what: str, probe: Callable[[], T], done: Callable[[T], bool],
               timeout_s: float = 30.0, every_s: float = 0.1) -> T:
    """Poll ``probe`` until ``done`` holds for its value; fail naming ``what`` and the last value
    otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout_s} s; last: {value!r}")
        time.sleep(every_s)


def port_from_log(log_path: Path, after: int = 0, timeout_s: float = 30.0) -> int:
    """The port of the ``http.listening`` line that follows the first ``after`` such lines."""

    def ports() -> list[int]:
        found = []
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == "http.listening":
                    found.append(int(event["port"]))
        return found

    return wait_until("the http.listening log line", ports, lambda p: len(p) > after,
                      timeout_s)[after]


def base_url(app: Application, timeout_s: float = 30.0) -> str:
    """The endpoint of an in-process instance started with ``http_port=0``."""
    port = wait_until("the HTTP server", lambda: monitor_of(app).port, lambda p: p is not None,
                      timeout_s, every_s=0.02)
    return f"http://127.0.0.1:{port}"
