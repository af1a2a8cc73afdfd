"""traffic_peaks on the test driver: bytes per base station over 5 min windows every minute, and
alerts for the windows over the threshold."""

from __future__ import annotations

import pytest

from streamproc.testing import check_crash_safety
from tests.topologies import expected
from tests.topologies.helpers import out_of_order, per_key, pipe_all, steps
from topologies._examples import BASE_MS, MINUTE, SECOND, partition_of
from topologies.traffic_peaks import THRESHOLD_BYTES, build, sample

IN, TRAFFIC, ALERTS = "cell-traffic", "station-traffic", "traffic-alerts"
MB = 1_000_000


def at(m: int, s: int = 0) -> int:
    return BASE_MS + m * MINUTE + s * SECOND


def report(station: str, ts: int, size: int) -> tuple[str, dict[str, object], int]:
    return (station, {"station": station, "bytes": size}, ts)


def load(start_min: int, size: int) -> tuple[dict[str, int], int]:
    return {"start": at(start_min), "end": at(start_min + 5), "bytes": size}, at(start_min + 5)


def alert(station: str, start_min: int, size: int) -> tuple[dict[str, object], int]:
    return ({"station": station, "start": at(start_min), "end": at(start_min + 5),
             "bytes": size, "threshold": THRESHOLD_BYTES}, at(start_min + 5))


def test_every_window_of_a_station_and_an_alert_for_those_over_the_threshold(topology_driver):
    d = topology_driver(build())
    pipe_all(d, IN, [report("bs-01", at(1), 100 * MB),  # windows starting at -3 .. 1 min
                     report("bs-02", at(0, 30), 150 * MB),  # exactly the threshold: no alert
                     report("bs-01", at(4, 59), 60 * MB)])  # windows 0 .. 4 min
    # The watermark is 04:49: the windows ending by 04:19 (+30 s grace) have closed.
    assert per_key(d.records(TRAFFIC)) == {
        "bs-01": [load(-3, 100 * MB), load(-2, 100 * MB), load(-1, 100 * MB)],
        "bs-02": [load(-4, 150 * MB), load(-3, 150 * MB), load(-2, 150 * MB),
                  load(-1, 150 * MB)]}
    pipe_all(d, IN, [report("bs-01", at(10), 1 * MB)])  # watermark 09:50: up to 4 .. 9 min
    assert per_key(d.records(TRAFFIC))["bs-01"][3:] == [
        load(0, 160 * MB), load(1, 160 * MB), load(2, 60 * MB), load(3, 60 * MB),
        load(4, 60 * MB)]
    assert per_key(d.records(ALERTS)) == {"bs-01": [alert("bs-01", 0, 160 * MB),
                                                    alert("bs-01", 1, 160 * MB)]}
    pipe_all(d, IN, [report("bs-01", at(4), 5 * MB),  # all its windows closed: late
                     report("bs-01", at(5, 40), 2 * MB)])  # only in 5 .. 10 min (still open)
    assert d.metrics.total("late_records_total") == 2
    d.finish()
    assert per_key(d.records(TRAFFIC))["bs-01"][8:] == [
        load(5, 2 * MB), *(load(s, 1 * MB) for s in range(6, 11))]
    assert len(d.records(ALERTS)) == 2


@pytest.mark.parametrize(("seed", "partitions"), [(5, 2), (42, 3)])
def test_the_sample_gives_what_a_batch_computation_gives(topology_driver, seed, partitions):
    events = sample(seed=seed)
    assert out_of_order(events, partitions) > 50
    d = topology_driver(build(), partitions=partitions)
    pipe_all(d, IN, events, partitions)
    d.finish()
    out, late = expected.traffic_peaks(events, lambda k: partition_of(k, partitions))
    assert per_key(d.records(TRAFFIC)) == out[TRAFFIC]
    assert per_key(d.records(ALERTS)) == out[ALERTS]
    assert sum(len(seq) for seq in out[ALERTS].values()) >= 2, "the sample has peaks"
    assert late, "the sample has reports late for some windows"
    assert d.metrics.total("late_records_total") == late


def test_crash_safety():
    script = steps(IN, [report("bs-01", at(1), 100 * MB), report("bs-01", at(4, 59), 60 * MB),
                        report("bs-02", at(6), 1 * MB),
                        report("bs-01", at(2), 5 * MB),  # late for the windows up to 0 min
                        report("bs-01", at(10), 1 * MB)])  # closes up to 4 min: 2 alerts
    assert check_crash_safety(build, script) == 4 * len(script)
