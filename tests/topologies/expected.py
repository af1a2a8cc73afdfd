"""What each example topology must write for a given input, from the batch computations in
reference.py and the topologies' parameters: ``{output topic: {key: [(value, timestamp)]}}``
(plus, where the topology has one, the late records). ``finish``: the input ended (every window
closes, as after the driver's ``finish()``); without it only what the data's own watermark
closed (a real run, whose flush records close the windows)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.topologies import reference
from tests.topologies.reference import Event, Output
from topologies import fraud_alerts as fraud
from topologies import hourly_counts as hourly
from topologies import sensor_averages as sensors
from topologies import sessions as visits
from topologies import traffic_peaks as traffic

Partition = Callable[[str], int]
# (key, value, timestamp, window end, watermark) of a record sent to the late topic
Late = list[tuple[str, Any, int, int, int]]


def hourly_counts(events: list[Event], partition: Partition, *,
                  finish: bool = True) -> tuple[Output, Late]:
    windows, late = reference.hopping(events, partition, size=hourly.HOUR, advance=hourly.HOUR,
                                      grace=hourly.GRACE_MS, ooo=hourly.MAX_OUT_OF_ORDERNESS_MS,
                                      finish=finish)
    out = {page: [({"start": w["start"], "end": w["end"], "count": len(w["values"])}, ts)
                  for w, ts in seq] for page, seq in windows.items()}
    return {"hourly-page-views": out}, [(e[0], e[1], e[2], end, wm) for e, _, end, wm in late]


def sensor_averages(events: list[Event], partition: Partition, *,
                    finish: bool = True) -> tuple[Output, int]:
    windows, late = reference.hopping(events, partition, size=sensors.WINDOW_MS,
                                      advance=sensors.WINDOW_MS, grace=sensors.GRACE_MS,
                                      ooo=sensors.MAX_OUT_OF_ORDERNESS_MS,
                                      event_time=lambda e: e[1]["ts"], finish=finish)

    def mean(values: list[dict[str, float]]) -> float:
        total = 0.0
        for v in values:  # in arrival order, like the engine's running sum
            total += v["temperature"]
        return round(total / len(values), 3)

    out = {sensor: [({"start": w["start"], "end": w["end"], "avg_temperature": mean(w["values"])},
                     ts) for w, ts in seq] for sensor, seq in windows.items()}
    return {"sensor-averages": out}, len(late)


def sessions(events: list[Event], partition: Partition, *,
             finish: bool = True) -> tuple[Output, int]:
    found, late = reference.sessions(events, partition, gap=visits.GAP_MS, grace=visits.GRACE_MS,
                                     ooo=visits.MAX_OUT_OF_ORDERNESS_MS, finish=finish)
    out = {visitor: [({"start": s["start"], "end": s["end"], "pages": s["count"]}, ts)
                     for s, ts in seq] for visitor, seq in found.items()}
    return {"visitor-sessions": out}, len(late)


def fraud_alerts(events: list[Event], partition: Partition, *,
                 finish: bool = True) -> tuple[Output, int]:
    alerts = reference.small_then_large(events, partition, ooo=fraud.MAX_OUT_OF_ORDERNESS_MS,
                                        small=fraud.SMALL, large=fraud.LARGE,
                                        within=fraud.PATTERN_WITHIN_MS, finish=finish)
    counts, late = reference.sliding_counts(events, partition, size=fraud.VELOCITY_WINDOW_MS,
                                            ooo=fraud.MAX_OUT_OF_ORDERNESS_MS)
    for card, seq in counts.items():
        over = [({"card": card, "rule": "velocity", "ts": w["end"], "count": w["count"],
                  "window_start": w["start"]}, ts)
                for w, ts in seq if w["count"] > fraud.VELOCITY_LIMIT]
        if over:
            alerts[card] = [*alerts.get(card, []), *over]
    return {"fraud-alerts": alerts}, len(late)


def traffic_peaks(events: list[Event], partition: Partition, *,
                  finish: bool = True) -> tuple[Output, int]:
    windows, late = reference.hopping(events, partition, size=traffic.WINDOW_MS,
                                      advance=traffic.ADVANCE_MS, grace=traffic.GRACE_MS,
                                      ooo=traffic.MAX_OUT_OF_ORDERNESS_MS, finish=finish)
    load = {station: [({"start": w["start"], "end": w["end"],
                        "bytes": sum(v["bytes"] for v in w["values"])}, ts) for w, ts in seq]
            for station, seq in windows.items()}
    alerts = {station: [({"station": station, **w, "threshold": traffic.THRESHOLD_BYTES}, ts)
                        for w, ts in seq if w["bytes"] > traffic.THRESHOLD_BYTES]
              for station, seq in load.items()}
    return ({"station-traffic": load,
             "traffic-alerts": {s: seq for s, seq in alerts.items() if seq}}, len(late))
