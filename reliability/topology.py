"""The topology every scenario runs: its results can be recomputed from the committed input.

Input: JSON events ``{"id": n, "g": group, "ts": ms}`` keyed by ``k<i>``. Two branches:

- ``counts``: the running count per Kafka key (no repartition: the source is keyed), one
  output per input record. Exactly once means each key's outputs run 1, 2, ..., n in order.
- ``windows``: re-keyed by group (a repartition topic, so watermarks cross it as control
  records), counted in tumbling event-time windows, emit final, late records to the late
  topic. Exactly once means every window is emitted once, and its count plus the late
  records of that window equals the input's count of it.

Run with ``streamproc run reliability.topology:build --param app_id=... --param source=...
--param counts=... --param windows=...``.
"""

from __future__ import annotations

from typing import Any

from streamproc import Topology, codecs, windows

WINDOW_MS = 1000
GRACE_MS = 200
FLUSH_GROUP = "flush"  # the far-future records that close the last windows: not checked


def build(app_id: str, source: str, counts: str, windows_topic: str) -> Topology:
    t = Topology(app_id)
    events = t.source(source, key=codecs.string(), value=codecs.json(), timestamp=event_time,
                      name="events")
    (events.group_by_key(name="by-key").count(store="counts")
     .to(counts, value=codecs.json()))
    (events.group_by(group_of, key=codecs.string(), name="groups")
     .window(windows.tumbling(WINDOW_MS, grace_ms=GRACE_MS))
     .count(store="windows", late="side_output")
     .to(windows_topic, value=codecs.json()))
    return t


def event_time(v: dict[str, Any]) -> int:
    ts: int = v["ts"]
    return ts


def group_of(v: dict[str, Any]) -> str:
    g: str = v["g"]
    return g


def window_of(ts: int) -> int:
    return ts - ts % WINDOW_MS
