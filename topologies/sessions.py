"""Sessions: website visitor sessions that end after 30 min of inactivity, with their start, end
and number of page views.

Input ``clicks``: key = the visitor id (UTF-8 string), value = JSON ``{"visitor": "v-04",
"page": "/docs"}`` (``schemas/click.avsc``); the record's CreateTime is when the page was
viewed. A visitor's views at most ``GAP_MS`` (30 min) apart belong to one session; a view that
arrives late and bridges two sessions merges them. The watermark trails the latest view by
``MAX_OUT_OF_ORDERNESS_MS`` (1 min); a session closes once the watermark passes its last view +
30 min + ``GRACE_MS`` (5 min). Views that could only start a session already closed are
dropped (counted in ``late_records_total``).

Output ``visitor-sessions``: key = the visitor id, value = JSON ``{"start": ms, "end": ms,
"pages": n}`` (``schemas/visitor-session.avsc``): the times of the session's first and last
views (both inclusive) and how many views it had, with timestamp ``end``; one record per session,
when it closes.

Sample data: ``sample()``; ``python3 -m topologies.sessions --produce`` writes it to the broker
(see topologies/_examples.py).
"""

from __future__ import annotations

import random
import sys
from typing import Any

from streamproc import Topology, codecs, windows
from topologies._examples import BASE_MS, HOUR, MINUTE, SECOND, Event, main

GAP_MS = 30 * MINUTE
MAX_OUT_OF_ORDERNESS_MS = 1 * MINUTE
GRACE_MS = 5 * MINUTE


def build(app_id: str = "sessions", source: str = "clicks",
          sink: str = "visitor-sessions") -> Topology:
    topology = Topology(app_id)
    (
        topology.source(source, key=codecs.string(), value=codecs.json(),
                        max_out_of_orderness_ms=MAX_OUT_OF_ORDERNESS_MS)
        .group_by_key()
        .window(windows.session(GAP_MS, grace_ms=GRACE_MS))
        .count(store="visitor-sessions")  # count() merges the counts of merged sessions
        .map(_session, name="session")
        .to(sink, key=codecs.string(), value=codecs.json())
    )
    return topology


def _session(window: dict[str, Any]) -> dict[str, Any]:
    return {"start": window["start"], "end": window["end"], "pages": window["value"]}


topology = build()

VISITORS = tuple(f"v-{i:02d}" for i in range(1, 13))
PAGES = ("/", "/docs", "/docs/windows", "/blog", "/pricing", "/signup")


def sample(seed: int = 3, n: int = 300) -> list[Event]:
    """About ``n`` page views of 12 visitors from 2024-03-01T00:00Z, in arrival order: sessions
    of 1-8 views 5 s to 12 min apart, separated by 31 min to 2 h of inactivity (one in 20
    exactly 30 min: the same session). CreateTime is when the page was viewed; 90% arrive within
    20 s, 6% 20 s to 3 min later (beyond the out-of-orderness bound, but their sessions are
    still open), 2% 40-90 min later (late unless their session is still open) and 2% 6-8 hours
    later (late: their sessions have closed)."""
    rng = random.Random(seed)
    sent: list[tuple[int, int, Event]] = []
    per_visitor = n // len(VISITORS)
    for v in VISITORS:
        ts = BASE_MS + rng.randrange(HOUR)
        views = 0
        while views < per_visitor:
            for i in range(min(rng.randint(1, 8), per_visitor - views)):
                if i:
                    ts += rng.randrange(5 * SECOND, 12 * MINUTE)
                r = rng.random()
                delay = (rng.randrange(20 * SECOND) if r < 0.9
                         else rng.randrange(20 * SECOND, 3 * MINUTE) if r < 0.96
                         else rng.randrange(40 * MINUTE, 90 * MINUTE) if r < 0.98
                         else rng.randrange(6 * HOUR, 8 * HOUR))
                click = {"visitor": v, "page": rng.choice(PAGES)}
                sent.append((ts + delay, len(sent), (v, click, ts)))
                views += 1
            ts += GAP_MS if rng.random() < 0.05 else rng.randrange(GAP_MS + MINUTE, 2 * HOUR)
    sent.sort(key=lambda s: s[:2])
    return [e for _, _, e in sent]


def flush(key: str, ts: int) -> Event:
    """A view by the pseudo-visitor ``key`` at ``ts``: it moves its partition's watermark."""
    return (key, {"visitor": key, "page": "/"}, ts)


if __name__ == "__main__":
    sys.exit(main(None, topology=topology, sample=sample, flush=flush))
