"""Traffic peaks: the data traffic of each telecom base station over 5 min windows that advance
every minute, and an alert whenever a station carried more than ``THRESHOLD_BYTES`` in one.

Input ``cell-traffic``: key = the base station id (UTF-8 string), value = JSON ``{"station":
"bs-03", "bytes": 1048576}`` (``schemas/traffic-report.avsc``): the bytes a station carried since
its previous report (stations report about every 10 s); the record's CreateTime is the time of
the report. The watermark trails the latest report by ``MAX_OUT_OF_ORDERNESS_MS`` (10 s) and a
window stays open ``GRACE_MS`` (30 s) longer. A report is counted in each of its five windows
that is still open (the others count it as late, in ``late_records_total``).

Outputs, both keyed by the station id, with timestamp ``end``, when a window closes:

- ``station-traffic``: JSON ``{"start": ms, "end": ms, "bytes": n}``
  (``schemas/station-traffic.avsc``), the total of ``[start, end)``, one record per station and
  window that had a report;
- ``traffic-alerts``: JSON ``{"station", "start", "end", "bytes", "threshold"}``
  (``schemas/traffic-alert.avsc``) for the windows over ``THRESHOLD_BYTES`` (150 MB).

Sample data: ``sample()``; ``python3 -m topologies.traffic_peaks --produce`` writes it to the
broker (see topologies/_examples.py).
"""

from __future__ import annotations

import random
import sys
from typing import Any

from streamproc import Topology, codecs, windows
from topologies._examples import BASE_MS, MINUTE, SECOND, Event, main

WINDOW_MS = 5 * MINUTE
ADVANCE_MS = 1 * MINUTE
MAX_OUT_OF_ORDERNESS_MS = 10 * SECOND
GRACE_MS = 30 * SECOND
THRESHOLD_BYTES = 150_000_000


def build(app_id: str = "traffic-peaks", source: str = "cell-traffic",
          sink: str = "station-traffic", alerts: str = "traffic-alerts") -> Topology:
    topology = Topology(app_id)
    load = (
        topology.source(source, key=codecs.string(), value=codecs.json(),
                        max_out_of_orderness_ms=MAX_OUT_OF_ORDERNESS_MS)
        .group_by_key()
        .window(windows.hopping(WINDOW_MS, ADVANCE_MS, grace_ms=GRACE_MS))
        .sum(_bytes, store="station-bytes")
        .map(_traffic, name="traffic")
    )
    load.to(sink, key=codecs.string(), value=codecs.json())
    (
        load.filter(lambda w: w["bytes"] > THRESHOLD_BYTES, name="over-threshold")
        .process(_alert, name="alert")
        .to(alerts, key=codecs.string(), value=codecs.json())
    )
    return topology


def _bytes(report: dict[str, Any]) -> int:
    return int(report["bytes"])


def _traffic(window: dict[str, Any]) -> dict[str, Any]:
    return {"start": window["start"], "end": window["end"], "bytes": window["value"]}


def _alert(ctx: Any, station: str, traffic: dict[str, Any]) -> None:
    ctx.emit({"station": station, **traffic, "threshold": THRESHOLD_BYTES})


topology = build()

STATIONS = tuple(f"bs-{i:02d}" for i in range(1, 7))
# (station, first minute, last minute): ~10x the usual traffic
PEAKS = (("bs-03", 12, 16), ("bs-05", 21, 23), ("bs-01", 5, 5))


def sample(seed: int = 5, minutes: int = 30) -> list[Event]:
    """Reports of 6 stations every 10 s (+-2 s) for ``minutes`` minutes from 2024-03-01T00:00Z,
    about 800 kB each, ten times that during ``PEAKS``, in arrival order: 95% within 3 s,
    4% 3-15 s late (beyond the out-of-orderness bound), 1% 1-3 min late (late for some of their
    windows)."""
    rng = random.Random(seed)
    sent: list[tuple[int, int, Event]] = []
    for station in STATIONS:
        for i in range(minutes * 6):
            ts = BASE_MS + i * 10 * SECOND + rng.randrange(-2 * SECOND, 2 * SECOND)
            minute = (ts - BASE_MS) // MINUTE
            peak = any(s == station and a <= minute <= b for s, a, b in PEAKS)
            size = int(rng.lognormvariate(13.5, 0.4)) * (10 if peak else 1)
            r = rng.random()
            delay = (rng.randrange(3 * SECOND) if r < 0.95
                     else rng.randrange(3 * SECOND, 15 * SECOND) if r < 0.99
                     else rng.randrange(MINUTE, 3 * MINUTE))
            sent.append((ts + delay, len(sent),
                         (station, {"station": station, "bytes": size}, ts)))
    sent.sort(key=lambda s: s[:2])
    return [e for _, _, e in sent]


def flush(key: str, ts: int) -> Event:
    """An empty report of the pseudo-station ``key`` at ``ts``: it moves its partition's
    watermark."""
    return (key, {"station": key, "bytes": 0}, ts)


if __name__ == "__main__":
    sys.exit(main(None, topology=topology, sample=sample, flush=flush))
