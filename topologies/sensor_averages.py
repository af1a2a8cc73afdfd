"""Sensor averages: the average temperature of each sensor over 5 s tumbling windows (Flink's
"AverageSensorReadings"), by the time each reading was taken.

Input ``sensor-readings``: key = the sensor id (UTF-8 string), value = JSON ``{"sensor_id":
"sensor-3", "ts": 1709251200123, "temperature": 21.4}`` (``schemas/sensor-reading.avsc``). Event
time is the value's ``ts`` (when the reading was taken), not the record's CreateTime (when it was
sent). Readings arrive out of order: the watermark trails the latest reading by
``MAX_OUT_OF_ORDERNESS_MS`` (2 s) and a window stays open ``GRACE_MS`` (1 s) longer. Readings
for a window that has closed are dropped (counted in ``late_records_total``).

Output ``sensor-averages``: key = the sensor id, value = JSON ``{"start": ms, "end": ms,
"avg_temperature": 21.35}`` (``schemas/sensor-average.avsc``): the mean of the sensor's readings
in ``[start, end)``, rounded to 3 decimals, with timestamp ``end``; one record per sensor and
window that had a reading, when the window closes.

Sample data: ``sample()``; ``python3 -m topologies.sensor_averages --produce`` writes it to the
broker (see topologies/_examples.py).

Avro variant ``avro`` (topics ``sensor-readings-avro`` -> ``sensor-averages-avro``): the same
computation with values in the schema registry wire format, the two schemas above registered
under the topics' value subjects (``--avro`` on the sample commands).
"""

from __future__ import annotations

import random
import sys
from typing import Any

from streamproc import Topology, codecs, windows
from streamproc.time import epoch_ms
from topologies._examples import BASE_MS, SCHEMAS, SECOND, Event, main

WINDOW_MS = 5 * SECOND
MAX_OUT_OF_ORDERNESS_MS = 2 * SECOND
GRACE_MS = 1 * SECOND


def build(app_id: str = "sensor-averages", source: str = "sensor-readings",
          sink: str = "sensor-averages", *, avro: bool = False) -> Topology:
    """``avro=True``: values in the schema registry wire format with the schemas above
    (``ts``, ``start`` and ``end`` are Avro timestamp-millis: datetimes in Python)."""
    topology = Topology(app_id)
    value_in = codecs.registry_avro(SCHEMAS / "sensor-reading.avsc") if avro else codecs.json()
    value_out = codecs.registry_avro(SCHEMAS / "sensor-average.avsc") if avro else codecs.json()
    (
        topology.source(source, key=codecs.string(), value=value_in,
                        timestamp=_reading_time,
                        max_out_of_orderness_ms=MAX_OUT_OF_ORDERNESS_MS)
        .group_by_key()
        .window(windows.tumbling(WINDOW_MS, grace_ms=GRACE_MS))
        .mean(_temperature, store="temperature-means")
        .map(_average, name="average")
        .to(sink, key=codecs.string(), value=value_out)
    )
    return topology


def _reading_time(reading: dict[str, Any]) -> int:
    return epoch_ms(reading["ts"])


def _temperature(reading: dict[str, Any]) -> float:
    return float(reading["temperature"])


def _average(window: dict[str, Any]) -> dict[str, Any]:
    return {"start": window["start"], "end": window["end"],
            "avg_temperature": round(window["value"], 3)}


topology = build()
# python3 -m streamproc run topologies.sensor_averages:avro (with STREAMPROC_SCHEMA_REGISTRY_URL)
avro = build("sensor-averages-avro", "sensor-readings-avro", "sensor-averages-avro", avro=True)

SENSORS = tuple(f"sensor-{i}" for i in range(1, 5))


def sample(seed: int = 2, n: int = 400) -> list[Event]:
    """``n`` readings, one per sensor about every second from 2024-03-01T00:00Z, temperatures a
    random walk around 20 degrees; each is sent (CreateTime, and the order of the list) after a
    delay: 85% within 0.5 s, 12% 0.5-2.5 s (beyond the out-of-orderness bound but mostly
    within grace), 3% 4-12 s (late)."""
    rng = random.Random(seed)
    temps = {s: 20.0 + rng.uniform(-2, 2) for s in SENSORS}
    sent: list[tuple[int, int, Event]] = []
    for i in range(n):
        sensor = SENSORS[i % len(SENSORS)]
        ts = BASE_MS + (i // len(SENSORS)) * SECOND + rng.randrange(SECOND)
        temps[sensor] = round(temps[sensor] + rng.gauss(0, 0.3), 1)
        r = rng.random()
        delay = (rng.randrange(500) if r < 0.85 else rng.randrange(500, 2500) if r < 0.97
                 else rng.randrange(4000, 12_000))
        reading = {"sensor_id": sensor, "ts": ts, "temperature": temps[sensor]}
        sent.append((ts + delay, i, (sensor, reading, ts + delay)))
    sent.sort(key=lambda s: s[:2])
    return [e for _, _, e in sent]


def flush(key: str, ts: int) -> Event:
    """A reading of the pseudo-sensor ``key`` taken at ``ts``: it moves its partition's
    watermark."""
    return (key, {"sensor_id": key, "ts": ts, "temperature": 0.0}, ts)


if __name__ == "__main__":
    sys.exit(main(None, topology=topology, sample=sample, flush=flush, avro_topology=avro))
