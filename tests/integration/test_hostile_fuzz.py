"""The hostile-input fuzzer, small (issue #15): a few hundred random hostile records
(tests/hostile.py) produced raw into ``streamproc run tests.apps:hostile_windows`` on the real
broker, with one ``kill -9`` and restart mid-run. The instance never exits on its own, every bad
record is in the DLQ exactly once with its headers, every good record's effect is exact.
``pytest -s`` shows the count table; ``python3 -m tests.hostile --records 50000`` is the large
version (docs/hostile-input.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import hostile

pytestmark = pytest.mark.kafka

RECORDS = 400
SEED = int(os.environ.get("HOSTILE_SEED", "15"))


def test_hostile_input_never_crashes_and_is_never_lost_across_a_kill(
        kafka: str, tmp_path: Path) -> None:
    report = hostile.run(kafka, RECORDS, SEED, tmp_path, kill=True, timeout_s=90)
    assert report.crashes == 0, f"seed {SEED}:\n{report.details()}"
    assert report.kills == 1
    # Every kind (and every variant) was tried.
    assert {c.kind for c in report.cases} == set(hostile.KINDS)
    assert {(c.kind, c.variant) for c in report.cases} == {
        (k, v) for k, vs in hostile.VARIANTS.items() for v in vs}
    assert report.ok, f"seed {SEED}:\n{report.details()}"
    bad = [c for c in report.cases if not c.good]
    good = [c for c in report.cases if c.good]
    assert sum(report.dead_lettered.values()) == len(bad)
    assert sum(report.processed.values()) == len(good)


@pytest.mark.soak
def test_hostile_input_soak(kafka: str, tmp_path: Path) -> None:
    """SCALE times the records, with the kill (``pytest --soak``)."""
    scale = int(os.environ.get("STREAMPROC_SOAK_SCALE", "10"))
    report = hostile.run(kafka, RECORDS * scale, SEED + 1, tmp_path, kill=True,
                         timeout_s=90 * scale)
    assert report.crashes == 0, f"seed {SEED + 1}:\n{report.details()}"
    assert report.kills == 1
    assert report.ok, f"seed {SEED + 1}:\n{report.details()}"
    bad = [c for c in report.cases if not c.good]
    good = [c for c in report.cases if c.good]
    assert sum(report.dead_lettered.values()) == len(bad)
    assert sum(report.processed.values()) == len(good)
