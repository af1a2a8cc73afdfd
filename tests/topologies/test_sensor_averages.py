"""sensor_averages on the test driver: mean temperature per sensor per 5 s, by reading time."""

from __future__ import annotations

import pytest

from streamproc.testing import check_crash_safety
from tests.topologies import expected
from tests.topologies.helpers import out_of_order, per_key, pipe_all, steps
from topologies._examples import BASE_MS, SECOND, partition_of
from topologies.sensor_averages import WINDOW_MS, build, sample

IN, OUT = "sensor-readings", "sensor-averages"
SENT = BASE_MS + 10**9  # CreateTime of every hand-made reading: event time is the value's ts


def reading(sensor: str, ms: int, temperature: float) -> tuple[str, dict[str, object], int]:
    return (sensor, {"sensor_id": sensor, "ts": BASE_MS + ms, "temperature": temperature}, SENT)


def window(start_s: int, avg: float) -> tuple[dict[str, object], int]:
    start = BASE_MS + start_s * SECOND
    return {"start": start, "end": start + WINDOW_MS, "avg_temperature": avg}, start + WINDOW_MS


def test_mean_per_sensor_and_window_by_the_time_each_reading_was_taken(topology_driver):
    d = topology_driver(build())
    pipe_all(d, IN, [reading("s1", 500, 20.0), reading("s1", 1200, 21.0),
                     reading("s2", 2000, 18.5),
                     reading("s1", 7000, 25.0),  # watermark 5.0 s: [0, 5 s) open until 6.0 s
                     reading("s1", 4900, 22.5)])  # out of order: still [0, 5 s)
    assert d.records(OUT) == []
    pipe_all(d, IN, [reading("s2", 8000, 19.0)])  # watermark 6.0 s: [0, 5 s) closes
    assert sorted(per_key(d.records(OUT)).items()) == [
        ("s1", [window(0, 21.167)]), ("s2", [window(0, 18.5)])]  # (20 + 21 + 22.5) / 3
    pipe_all(d, IN, [reading("s1", 3000, 30.0)])  # late: dropped, counted
    assert d.metrics.total("late_records_total") == 1
    d.finish()
    assert sorted(per_key(d.records(OUT)).items()) == [
        ("s1", [window(0, 21.167), window(5, 25.0)]), ("s2", [window(0, 18.5), window(5, 19.0)])]


def test_a_reading_beyond_the_bound_but_within_grace_still_counts(topology_driver):
    d = topology_driver(build())
    pipe_all(d, IN, [reading("s1", 1000, 20.0),
                     reading("s1", 7999, 20.0),  # watermark 5.999 s: [0, 5 s) still open
                     reading("s1", 4999, 23.0),  # 3 s behind the latest reading: counted
                     reading("s1", 8000, 20.0),  # watermark 6.0 s: [0, 5 s) closes
                     reading("s1", 4998, 40.0)])  # late
    assert d.values(OUT) == [window(0, 21.5)[0]]
    assert d.metrics.total("late_records_total") == 1


@pytest.mark.parametrize(("seed", "partitions"), [(2, 2), (12, 3)])
def test_the_sample_gives_what_a_batch_computation_gives(topology_driver, seed, partitions):
    events = sample(seed=seed)
    assert out_of_order(events, partitions, lambda e: e[1]["ts"]) > 50
    d = topology_driver(build(), partitions=partitions)
    pipe_all(d, IN, events, partitions)
    d.finish()
    out, late = expected.sensor_averages(events, lambda k: partition_of(k, partitions))
    assert per_key(d.records(OUT)) == out[OUT]
    assert late, "the sample has late readings"
    assert d.metrics.total("late_records_total") == late


def test_crash_safety():
    script = steps(IN, [reading("s1", 500, 20.0), reading("s2", 900, 18.0),
                        reading("s1", 6000, 21.0), reading("s1", 4000, 22.0),
                        reading("s2", 9000, 19.0)])  # [0, 5 s) closes
    assert check_crash_safety(build, script) == 4 * len(script)
