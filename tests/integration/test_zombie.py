"""A zombie: an instance frozen (SIGSTOP) past its session timeout loses its partitions to
another instance; when it wakes up (SIGCONT) with work in flight, its commit must be fenced
(KIP-447: its group generation is stale), its work discarded, and the output stay exact."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from streamproc.kafka import io
from tests.harness import AppProcess, create_topics, unique, wait_progress
from tests.integration.test_crash import _feed
from tests.integration.test_rebalance import _wait_event
from tests.integration.wordcount_check import assert_exactly_once, make_lines

pytestmark = [pytest.mark.kafka, pytest.mark.crash]


def test_frozen_instance_is_fenced_when_it_wakes(kafka: str, tmp_path: Path) -> None:
    app_id, src, sink = unique("zombie"), unique("lines"), unique("counts")
    create_topics(kafka, (src, 4), (sink, 4))
    lines = make_lines(3000, seed=51)
    env = {"T_APP": app_id, "T_IN": src, "T_OUT": sink}
    # A long commit interval makes sure the zombie is frozen holding uncommitted work.
    common = {"consume_batch_size": 100, "commit_interval_ms": 2000}
    a = AppProcess("tests.apps:wordcount", kafka, tmp_path / "a", tmp_path / "a.log", env,
                   **common)
    z = AppProcess("tests.apps:wordcount", kafka, tmp_path / "z", tmp_path / "z.log", env,
                   **common)
    a.start()
    _wait_event(a, "task.running", 60)
    z.start()
    _wait_event(z, "task.running", 60)
    feeder = _feed(kafka, src, lines, seconds=20)
    wait_progress(z, kafka, app_id)  # the zombie is processing: frozen mid-interval below

    assert z.proc is not None
    mark = len(a.log_text())
    z.proc.send_signal(signal.SIGSTOP)
    # The session (6 s) expires; A takes everything over and processes it.
    _wait_event(a, "rebalance.assigned", 60, after=mark)
    wait_progress(a, kafka, app_id, after=mark, unless=lambda: not feeder.is_alive())
    zmark = len(z.log_text())
    z.proc.send_signal(signal.SIGCONT)
    # The zombie must notice: its partitions are lost or its commit fails, and it recovers.
    woke = _wait_event(z, "instance.recovering", 60, after=zmark)
    assert woke
    feeder.join()
    assert io.wait_processed(kafka, app_id, [src, f"{app_id}-words-repartition"], 180), \
        a.log_text()[-2000:] + z.log_text()[-2000:]
    assert z.terminate() == 0
    assert a.terminate() == 0
    assert_exactly_once(kafka, sink, lines)
