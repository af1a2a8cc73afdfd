"""ad_attribution as a ``streamproc run`` process on the real broker, killed with -9 while both
topics are fed: the output equals the batch computation, each record exactly once."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streamproc.kafka import io
from tests.harness import AppProcess, crash_while_fed, create_topics, unique
from topologies._examples import PARTITIONS, Event, partition_of, with_flush
from topologies.ad_attribution import expected, flush, sample

pytestmark = [pytest.mark.kafka, pytest.mark.crash]


def _records(events: list[Event]) -> list[tuple[bytes, bytes, int, int]]:
    return [(k.encode(), json.dumps(v).encode(), ts, partition_of(k, PARTITIONS))
            for k, v, ts in with_flush(events, flush, PARTITIONS)]


def _feed(kafka: str, topics: dict[str, list[tuple[bytes, bytes, int, int]]],
          seconds: float, chunks: int = 20) -> threading.Thread:
    """Both topics in chunks; the clicks a chunk behind the impressions they follow."""
    def run() -> None:
        for i in range(chunks + 1):
            for n, (topic, recs) in enumerate(topics.items()):
                j = i - n
                if 0 <= j < chunks:
                    size = -(-len(recs) // chunks)
                    io.produce_timed(kafka, topic, recs[j * size:(j + 1) * size])
            time.sleep(seconds / chunks)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_ad_attribution_is_exact_across_kill9(kafka: str, tmp_path: Path) -> None:
    app_id, imps, clicks, out = (unique("ads"), unique("impressions"), unique("clicks"),
                                 unique("attribution"))
    create_topics(kafka, (imps, PARTITIONS), (clicks, PARTITIONS), (out, PARTITIONS))
    samples = sample(seed=5, n=400)
    app = AppProcess("tests.apps:ad_attribution", kafka, tmp_path / "state", tmp_path / "app.log",
                     {"T_APP": app_id, "T_IN": imps, "T_CLICKS": clicks, "T_OUT": out},
                     consume_batch_size=50)
    feeder = _feed(kafka, {imps: _records(samples["impressions"]),
                           clicks: _records(samples["clicks"])}, seconds=8)
    crash_while_fed(app, feeder, [("after_commit", 2), ("before_commit", 3)], seed=2)
    app.start()
    assert io.wait_processed(kafka, app_id, [imps, clicks], timeout_s=120), \
        app.log_text()[-3000:]
    assert app.terminate() == 0

    got: dict[str, list[Any]] = {}
    for r in io.read_all(kafka, out):
        key = (r.key or b"").decode()
        if not key.startswith("__flush"):
            got.setdefault(key, []).append((json.loads(r.value or b""), r.timestamp))
    want = expected(samples)
    counts = {k: Counter(json.dumps(v, sort_keys=True) for v in vs) for k, vs in got.items()}
    assert counts == {k: Counter(json.dumps(v, sort_keys=True) for v in vs)
                      for k, vs in want.items()}
    assert io.read_all(kafka, f"{app_id}-dlq") == []
