"""Ad attribution: each impression, with the clicks it earned in the 10 minutes after it.

Inputs, both keyed by the impression id (UTF-8 string), CreateTime = when it happened:

- ``impressions``: JSON ``{"impression": "i-0042", "ad": "ad-3", "user": "u-17", "ts": ...}``
- ``clicks``: JSON ``{"impression": "i-0042", "click": "k-0007", "ts": ...}``

(``ts``: the same epoch milliseconds as the record's CreateTime, for ``delay_ms``.)

Output ``ad-attribution``, key = the impression id, value = JSON
``{"impression", "ad", "user", "clicked", "click", "delay_ms"}``:

- one ``clicked: true`` record per click at most ``ATTRIBUTION_WINDOW_MS`` (10 min) after its
  impression (a click before the impression, or later than that, is not attributed), stamped
  with the click's time, as soon as both have arrived;
- ``clicked: false`` (``click`` and ``delay_ms`` null) for an impression that got none, stamped
  with the impression's time, once the watermark has passed the end of its window plus
  ``GRACE_MS`` (no click can still arrive for it).

An interval join (docs/joins.md): left = impressions, right = clicks, ``lower_ms=0``,
``upper_ms`` = the window; sources allow ``MAX_OUT_OF_ORDERNESS_MS`` (30 s) of disorder. The
task's watermark is the smaller of the two topics' times, so a backlog of one read before the
other makes nothing late.
"""

from __future__ import annotations

import random
import sys
from typing import Any

from streamproc import Topology, codecs
from topologies._examples import BASE_MS, MINUTE, SECOND, Event, main

ATTRIBUTION_WINDOW_MS = 10 * MINUTE
GRACE_MS = 1 * MINUTE
MAX_OUT_OF_ORDERNESS_MS = 30 * SECOND


def build(app_id: str = "ad-attribution", impressions: str = "impressions",
          clicks: str = "clicks", sink: str = "ad-attribution") -> Topology:
    topology = Topology(app_id)
    shown = topology.source(impressions, key=codecs.string(), value=codecs.json(),
                            max_out_of_orderness_ms=MAX_OUT_OF_ORDERNESS_MS)
    clicked = topology.source(clicks, key=codecs.string(), value=codecs.json(),
                              max_out_of_orderness_ms=MAX_OUT_OF_ORDERNESS_MS)
    (shown.interval_join(clicked, attribute, lower_ms=0, upper_ms=ATTRIBUTION_WINDOW_MS,
                         grace_ms=GRACE_MS, how="left", store="attribution",
                         name="attribution")
     .to(sink, key=codecs.string(), value=codecs.json()))
    return topology


def attribute(impression: dict[str, Any], click: dict[str, Any] | None) -> dict[str, Any]:
    return {"impression": impression["impression"], "ad": impression.get("ad"),
            "user": impression.get("user"), "clicked": click is not None,
            "click": click["click"] if click is not None else None,
            "delay_ms": click["ts"] - impression["ts"] if click is not None else None}


def with_time(value: dict[str, Any], ts: int) -> dict[str, Any]:
    return {**value, "ts": ts}


def sample(seed: int = 7, n: int = 300) -> dict[str, list[Event]]:
    """Impressions over two hours, about one in three clicked (some twice, some too late, some
    before the impression by a clock skew), in a slightly shuffled order."""
    rng = random.Random(seed)
    impressions: list[Event] = []
    clicks: list[Event] = []
    k = 0
    for i in range(n):
        imp = f"i-{i:04d}"
        ts = BASE_MS + i * 24 * SECOND + rng.randrange(20 * SECOND)
        impressions.append((imp, {"impression": imp, "ad": f"ad-{rng.randrange(6)}",
                                  "user": f"u-{rng.randrange(40):02d}", "ts": ts}, ts))
        for _ in range(rng.choices((0, 1, 2), (6, 3, 1))[0]):
            delay = rng.choice((rng.randrange(ATTRIBUTION_WINDOW_MS + 1),
                                rng.randrange(ATTRIBUTION_WINDOW_MS + 1),
                                ATTRIBUTION_WINDOW_MS + rng.randrange(1, 5 * MINUTE),
                                -rng.randrange(1, 10 * SECOND)))
            clicks.append((imp, {"impression": imp, "click": f"k-{k:04d}", "ts": ts + delay},
                           ts + delay))
            k += 1
    for events in (impressions, clicks):
        events.sort(key=lambda e: e[2] + rng.randrange(MAX_OUT_OF_ORDERNESS_MS // 2))
    return {"impressions": impressions, "clicks": clicks}


def flush(key: str, ts: int) -> Event:
    return (key, {"impression": key, "click": key, "ts": ts}, ts)


def expected(samples: dict[str, list[Event]]) -> dict[str, list[tuple[dict[str, Any], int]]]:
    """The attribution computed in one pass over all the data (a batch job), per impression
    in output order: its attributed clicks in the order they arrive, then, if none, the
    unclicked record. Assumes nothing is late (the sample's disorder is within bounds)."""
    by_imp: dict[str, list[Event]] = {}
    for key, value, ts in samples["clicks"]:
        by_imp.setdefault(key, []).append((key, value, ts))
    out: dict[str, list[tuple[dict[str, Any], int]]] = {}
    for key, imp, ts in samples["impressions"]:
        hits = [(attribute(imp, c), cts) for _, c, cts in by_imp.get(key, [])
                if ts <= cts <= ts + ATTRIBUTION_WINDOW_MS]
        out[key] = hits or [(attribute(imp, None), ts)]
    return out


if __name__ == "__main__":
    sys.exit(main(None, topology=build(), sample=sample, flush=flush))
