"""Hourly counts: page views counted per page per hour (tumbling 1 h windows, one final result
per window).

Input ``page-views``: key = the page (UTF-8 string, e.g. ``/docs``), value = JSON
``{"user": "u07", "page": "/docs"}`` (``schemas/page-view.avsc``); the record's CreateTime is
when the view happened. Views may arrive out of order: the watermark trails the latest view by
``MAX_OUT_OF_ORDERNESS_MS`` (1 min) and an hour stays open ``GRACE_MS`` (5 min) longer, so an
hour closes once a view 6 min past its end has been seen (per input partition).

Output ``hourly-page-views``: key = the page, value = JSON ``{"start": ms, "end": ms, "count":
n}`` (``schemas/hourly-page-count.avsc``) for the hour ``[start, end)``, with timestamp ``end``:
exactly one record per page and hour that had a view, when the hour closes.

Late views (their hour already closed) go unchanged to ``hourly-counts-late``, with headers
naming the hour (``streamproc.window.start``/``end``) and the watermark.

Sample data: ``sample()``; ``python3 -m topologies.hourly_counts --produce`` writes it to the
broker (see topologies/_examples.py).
"""

from __future__ import annotations

import random
import sys
from typing import Any

from streamproc import Topology, codecs, windows
from topologies._examples import BASE_MS, HOUR, MINUTE, Event, main

MAX_OUT_OF_ORDERNESS_MS = 1 * MINUTE
GRACE_MS = 5 * MINUTE


def build(app_id: str = "hourly-counts", source: str = "page-views",
          sink: str = "hourly-page-views") -> Topology:
    topology = Topology(app_id)
    (
        topology.source(source, key=codecs.string(), value=codecs.json(),
                        timestamp="create_time", max_out_of_orderness_ms=MAX_OUT_OF_ORDERNESS_MS)
        .group_by_key()  # the input is keyed by page already: no repartition
        .window(windows.tumbling(HOUR, grace_ms=GRACE_MS))
        .count(store="hourly-counts", emit="final", late="side_output")
        .map(_hourly_count, name="hourly-count")
        .to(sink, key=codecs.string(), value=codecs.json())
    )
    return topology


def _hourly_count(window: dict[str, Any]) -> dict[str, Any]:
    return {"start": window["start"], "end": window["end"], "count": window["value"]}


topology = build()

PAGES = ("/", "/docs", "/blog", "/pricing", "/signup")
_PAGE_WEIGHTS = (5, 4, 3, 2, 1)


def sample(seed: int = 1, n: int = 600, hours: int = 4) -> list[Event]:
    """``n`` page views over ``hours`` hours from 2024-03-01T00:00Z, in the order they arrive.

    84% arrive in order, 10% up to the out-of-orderness bound late (never late), 4% 1 to 10 min
    late (late if their hour closed meanwhile) and 2% 1 to 2 hours late (always late).
    """
    rng = random.Random(seed)
    step = hours * HOUR // n
    out: list[Event] = []
    for i in range(n):
        sent = BASE_MS + i * step + rng.randrange(step)
        r = rng.random()
        if r < 0.10:
            ts = sent - rng.randrange(MAX_OUT_OF_ORDERNESS_MS)
        elif r < 0.14:
            ts = sent - rng.randrange(MINUTE, 10 * MINUTE)
        elif r < 0.16:
            ts = sent - rng.randrange(HOUR, 2 * HOUR)
        else:
            ts = sent
        page = rng.choices(PAGES, _PAGE_WEIGHTS)[0]
        out.append((page, {"user": f"u{rng.randrange(1, 25):02d}", "page": page}, ts))
    return out


def flush(key: str, ts: int) -> Event:
    """A view of the pseudo-page ``key`` at ``ts``: it moves its partition's watermark."""
    return (key, {"user": "flush", "page": key}, ts)


if __name__ == "__main__":
    sys.exit(main(None, topology=topology, sample=sample, flush=flush))
