"""The dashboard in real headless Chromium (Debian's package) against a running instance: the
rendered DOM shows the running topology, its partitions and its dead letters, and a
screenshot is taken.

``STREAMPROC_UPDATE_SCREENSHOT=1`` also writes the screenshot to docs/dashboard.png (the
README's picture)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from streamproc.kafka import io
from tests.harness import ROOT, create_topics, running, unique
from tests.integration.wordcount_check import make_lines
from tests.ops_client import base_url, get_json, wait_until
from topologies.wordcount import build

pytestmark = pytest.mark.kafka

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1280, 1180)


class Dom(HTMLParser):
    """What the dashboard rendered: graph node names, the topic lists, table rows by table."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[str] = []
        self.lists: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._list: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "g" and a.get("data-name"):
            self.nodes.append(a["data-name"] or "")
        elif tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "dd" and a.get("data-list"):
            self._list = a["data-list"]
            self.lists[self._list or ""] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            if self._row:
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "dd":
            self._list = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._list is not None:
            self.lists[self._list] += data


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    # Flags that work as root in a container: no sandbox, no GPU, nothing phoning home. The
    # virtual time budget lets the page fetch /topology and /status and render before the
    # dump or the screenshot (network waits do not use up virtual time).
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
         f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=2500", *extra, url],
        capture_output=True, timeout=90, check=True)


def png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", raw[16:24])  # the IHDR chunk comes first
    return width, height


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install chromium; .ci/run installs it)")
def test_dashboard_renders_the_running_topology(kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("wordcount"), unique("text-lines"), unique("word-counts")
    repartition, changelog = f"{app_id}-words-repartition", f"{app_id}-counts-changelog"
    create_topics(kafka, (src, 3), (sink, 3))
    lines = make_lines(2000, seed=11)
    with running(build(app_id, src, sink), kafka, tmp_path / "state", http_port=0) as app:
        base = base_url(app)
        io.produce(kafka, src, ((str(i).encode(), line.encode()) for i, line in enumerate(lines)))
        io.produce(kafka, src, [(None, b"\xff\xfe not utf-8")] * 3, partition=0)
        assert io.wait_processed(kafka, app_id, [src, repartition], timeout_s=60)
        fed = io.committed_offsets(kafka, app_id, src)
        wait_until("status with every record committed", lambda: get_json(base + "/status")[1],
                   lambda s: s["dead_letters"] == {"CodecError": 3} and s["ready"]
                   and len(s["partitions"]) == 6 and all(p["lag"] == 0 for p in s["partitions"])
                   and len(s["stores"]) == 3
                   and [p["committed"] for p in s["partitions"][:3]] == [fed[0], fed[1], fed[2]])

        dom = Dom()
        dom.feed(chromium(base + "/", tmp_path / "profile-dom", "--dump-dom").stdout.decode())
        shot = tmp_path / "dashboard.png"
        chromium(base + "/", tmp_path / "profile-shot", f"--screenshot={shot}")

    compiled = app.compiled
    node_names = {n.name for st in compiled.subtopologies for n in st.nodes}
    assert sorted(dom.nodes) == sorted(node_names | {src, sink, repartition})
    assert dom.lists == {"source topics": src, "sink topics": sink, "stores": "counts",
                         "internal topics": f"{changelog}, {repartition}",
                         "dead-letter topic": f"{app_id}-dlq"}
    rows = dom.tables["partitions"]
    assert [(r[0], r[1], r[2], r[3], r[7]) for r in rows] == [
        (topic, str(p), f"{sub}_{p}", "running", "0")
        for sub, topic in enumerate((src, repartition)) for p in range(3)]
    assert [r[4] for r in rows[:3]] == [f"{fed[p]:,}" for p in range(3)]  # committed
    assert dom.tables["dlq"] == [["CodecError", "3", "3"]]
    assert sorted((r[0], r[1]) for r in dom.tables["stores"]) == [
        ("counts", "0"), ("counts", "1"), ("counts", "2")]

    assert png_size(shot) == WINDOW
    if os.environ.get("STREAMPROC_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")
