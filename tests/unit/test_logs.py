"""Log format and conventions: JSON lines off a TTY, console on one, other libraries' lines in
the same format, and every line about a record names its topic, partition and offset."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
import structlog
from structlog.testing import capture_logs

from streamproc import Topology, codecs, logs, windows
from streamproc.testing import TopologyTestDriver


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True




@pytest.mark.usefixtures("restore_logging")
def test_json_lines_when_not_a_tty_including_other_libraries() -> None:
    out = io.StringIO()
    logs.configure("info", "auto", stream=out)
    structlog.get_logger("t").info("checkpoint.summary", checkpoints=3)
    structlog.get_logger("t").debug("not.shown")
    logging.getLogger("uvicorn.error").warning("something odd")
    logging.getLogger("uvicorn.error").info("banner, below warning: dropped")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["event"], x["level"]) for x in lines] == [
        ("checkpoint.summary", "info"), ("something odd", "warning")]
    assert lines[0]["checkpoints"] == 3
    assert lines[1]["logger"] == "uvicorn.error"
    assert all(x["timestamp"].endswith("Z") for x in lines)


@pytest.mark.usefixtures("restore_logging")
def test_console_lines_on_a_tty_and_configuring_twice_does_not_double_lines() -> None:
    tty = FakeTty()
    logs.configure("info", "auto", stream=tty)
    logs.configure("info", "auto", stream=tty)
    structlog.get_logger("t").info("restore.progress", records=10)
    logging.getLogger("x").error("library line")
    text = re.sub(r"\x1b\[[0-9;]*m", "", tty.getvalue())  # colours on a TTY
    assert text.count("restore.progress") == 1
    assert text.count("library line") == 1
    assert "records=10" in text
    assert not text.lstrip().startswith("{")


def failing_and_windowed() -> Topology:
    t = Topology("logs")
    src = t.source("in", key=codecs.string(), value=codecs.json())
    src.map(lambda v: 10 // v["n"], name="divide").to("quotients", value=codecs.json())
    (src.group_by_key(name="by-key")
     .window(windows.tumbling(1000)).count(store="w", late="drop")
     .to("counts", value=codecs.json()))
    return t


@pytest.mark.usefixtures("restore_logging")
def test_lines_about_a_record_carry_topic_partition_offset() -> None:
    # Whatever an earlier test configured: debug lines (late_dropped) must get through.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    with capture_logs() as captured, TopologyTestDriver(failing_and_windowed()) as d:
        d.pipe("in", {"n": 2}, "k", timestamp=5_000)
        d.pipe("in", {"n": 0}, "k", timestamp=5_100)  # ZeroDivisionError: dead-lettered
        d.pipe("in", {"n": 1}, "k", timestamp=100)  # behind the watermark: late, dropped
    about_records = [e for e in captured if e["event"].startswith("record.")]
    assert [(e["event"], e["topic"], e["partition"], e["offset"]) for e in about_records] == [
        ("record.dead_lettered", "in", 0, 1), ("record.late_dropped", "in", 0, 2)]
    # Nothing else is logged per record.
    assert [e["event"] for e in captured if e["event"] not in
            ("record.dead_lettered", "record.late_dropped")] == []
