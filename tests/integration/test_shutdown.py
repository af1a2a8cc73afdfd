"""``shutdown_timeout_ms`` bounds a stop: an instance whose user code hangs during the final
checkpoint's wait exits 1 with one line once the timeout passes, and commits nothing past the
record it was stuck on (the next start replays it)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from streamproc.kafka import io
from tests.harness import AppProcess, create_topics, unique, wait_event

pytestmark = [pytest.mark.kafka]


def test_a_stop_stuck_in_user_code_ends_at_the_shutdown_timeout(kafka: str,
                                                                tmp_path: Path) -> None:
    app_id, src, sink = unique("hang"), unique("lines"), unique("out")
    create_topics(kafka, (src, 1), (sink, 1))
    mark = tmp_path / "hanging"
    app = AppProcess("tests.apps:hanging", kafka, tmp_path / "state", tmp_path / "app.log",
                     {"T_APP": app_id, "T_IN": src, "T_OUT": sink, "T_HANG_MARK": str(mark)},
                     shutdown_timeout_ms=2000)
    app.start()
    try:
        io.produce(kafka, src, [(None, b"a"), (None, b"b")])
        deadline = time.monotonic() + 90
        while [r.value for r in io.read_all(kafka, sink)] != [b"a", b"b"]:
            assert app.alive and time.monotonic() < deadline, app.log_text()[-3000:]
            time.sleep(0.2)
        io.produce(kafka, src, [(None, b"hang")])
        while not mark.exists():
            assert app.alive and time.monotonic() < deadline, app.log_text()[-3000:]
            time.sleep(0.1)
        assert app.proc is not None
        app.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        code = app.wait(60)
        took = time.monotonic() - stopped
    finally:
        if app.alive:
            app.kill9()
    assert code == 1, app.log_text()[-3000:]
    assert 2.0 <= took < 20, took
    (line,) = wait_event(app, "instance.shutdown_timeout", 5)
    assert line["timeout_ms"] == 2000
    # Nothing committed past the record it hung on: offsets 0 and 1 done, 2 replayed.
    assert io.committed_offsets(kafka, app_id, src) == {0: 2}
    assert [r.value for r in io.read_all(kafka, sink)] == [b"a", b"b"]
