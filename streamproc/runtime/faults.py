"""Named crash points for crash tests: ``STREAMPROC_TEST_CRASH_AT=<point>`` makes the process
SIGKILL itself the Nth time (``STREAMPROC_TEST_CRASH_AFTER``, default 1) it reaches that point.

Read once at import; when unset, :func:`hit` is one string comparison per checkpoint.
"""

from __future__ import annotations

import os
import signal

_POINT = os.environ.get("STREAMPROC_TEST_CRASH_AT", "")
_AFTER = int(os.environ.get("STREAMPROC_TEST_CRASH_AFTER", "1") or "1")
_hits = 0

POINTS = ("before_commit", "after_commit", "after_process", "mid_restore", "mid_seed",
          "after_seed")
if _POINT and _POINT not in POINTS:
    raise ValueError(f"STREAMPROC_TEST_CRASH_AT={_POINT!r} is not a crash point: {POINTS}")


def hit(point: str) -> None:
    global _hits
    if point != _POINT:
        return
    _hits += 1
    if _hits >= _AFTER:
        os.kill(os.getpid(), signal.SIGKILL)
