"""A task's event-time progress: stream time, watermark, idleness and upstream watermarks.

- **Stream time** is the largest event timestamp the task has seen on its own inputs; the
  **local watermark** is stream time minus the allowed out-of-orderness.
- Behind a repartition topic (with watermark propagation on) records do not move the watermark:
  every upstream task writes its watermark into the topic as a control record, and the task's
  watermark is the *minimum* over all upstream tasks (Flink's rule for input channels), so one
  fast upstream partition cannot make a slow one's on-time records late. Until every upstream
  task has been heard from, the watermark does not move. An upstream task that is idle does not
  hold the minimum back.
- **Idleness** (off unless ``idle_timeout_ms`` is set): after that long without input the
  watermark advances with the wall clock, so windows over quiet partitions still close.

The watermark never goes backwards. Watermarks are tracked per record, not per batch: an
operator asks :meth:`TaskTime.watermark_at` for the watermark as of a record's offset, so the
same input gives the same late/on-time decisions however it was batched (replays after a crash
batch differently).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from bisect import bisect_right
from typing import Any

import orjson

from streamproc.errors import StreamprocError
from streamproc.time.windows import END_OF_TIME

NO_WATERMARK = -(2**63)  # before the first record: nothing is late, nothing closes
CONTROL_HEADER = "streamproc.control"  # first header of a watermark control record
CONTROL_WATERMARK = b"watermark"
# Second header: HMAC-SHA256 over the topic and the payload, with the application's control
# key. A control record is taken only from a writer that has the key, i.e. a task of the same
# application (sinks strip every streamproc.* header from user records, so a user record can
# never reach a repartition topic looking like one).
CONTROL_MAC_HEADER = "streamproc.control.mac"
_TASK_ID = re.compile(r"(\d{1,9})_(\d{1,9})")


class ControlRecordRejected(StreamprocError):
    """A record on a repartition topic that claims to be a watermark but was not written by a
    task of this application, or is malformed: bad input, dead-lettered, ignored for time."""


def control_key(application_id: str, secret: bytes | None = None) -> bytes:
    """The key control records are signed with: the shared secret when one is configured, else
    one derived from the application id (tells this application's control records from any
    other's and from forwarded user records; not a secret from whoever can write the topic)."""
    if secret is not None:
        return hashlib.sha256(b"streamproc-control-secret\0" + secret).digest()
    return hashlib.sha256(b"streamproc-control\0" + application_id.encode()).digest()


def control_mac(key: bytes, topic: str, payload: bytes) -> bytes:
    return hmac.new(key, topic.encode() + b"\0" + payload, hashlib.sha256).hexdigest().encode()


def parse_control(key: bytes, topic: str, payload: bytes, headers: list[tuple[str, Any]],
                  upstream: int) -> tuple[str, int, bool]:
    """(task, watermark, idle) of a genuine control record read from ``topic``, which
    ``upstream`` tasks write; raises :class:`ControlRecordRejected` otherwise."""
    if len(headers) != 2 or headers[0] != (CONTROL_HEADER, CONTROL_WATERMARK) or \
            headers[1][0] != CONTROL_MAC_HEADER:
        raise ControlRecordRejected(
            f"record on {topic} carries {CONTROL_HEADER} but not exactly the headers of a "
            f"watermark control record ({CONTROL_HEADER}, {CONTROL_MAC_HEADER})")
    mac = headers[1][1]
    if not isinstance(mac, bytes) or not hmac.compare_digest(mac, control_mac(key, topic,
                                                                                 payload)):
        raise ControlRecordRejected(
            f"control record on {topic} is not signed with this application's control key "
            "(written by another application, or forged)")
    try:
        msg = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ControlRecordRejected(f"control record on {topic} is not JSON: {exc}") from None
    if not isinstance(msg, dict) or set(msg) != {"task", "watermark", "idle"}:
        raise ControlRecordRejected(f"control record on {topic} is not a watermark object")
    task, wm, idle = msg["task"], msg["watermark"], msg["idle"]
    m = _TASK_ID.fullmatch(task) if isinstance(task, str) else None
    if m is None or int(m.group(2)) >= upstream:
        raise ControlRecordRejected(
            f"control record on {topic} names task {task!r}, not one of the {upstream} tasks "
            "that write it")
    if type(wm) is not int or not NO_WATERMARK <= wm <= END_OF_TIME or type(idle) is not bool:
        raise ControlRecordRejected(f"control record on {topic} has an invalid watermark "
                                    f"{wm!r} or idle flag {idle!r}")
    return task, wm, idle


class TaskTime:
    __slots__ = ("_batch_wm", "_dirty", "_has_local", "_idle_base", "_last_input",
                 "_marks_off", "_marks_wm", "_now", "_sent", "_started", "_topic_input",
                 "control_key", "expected", "idle", "idle_timeout_ms", "local_topics", "ooo_ms",
                 "stream_time", "topic_time", "upstream", "watermark")

    def __init__(self, *, ooo_ms: int, idle_timeout_ms: int | None, has_local: bool,
                 upstream_tasks: dict[str, int], now_ms: int,
                 control_key: bytes = b"", local_topics: tuple[str, ...] = ()) -> None:
        """``local_topics``: when a task reads several topics whose records move its
        watermark, their names: the local watermark is then the minimum over them (each one's
        largest time), as behind a repartition, so that a topic read ahead of another (a
        backlog, a replay) does not make the other's on-time records late. A topic quiet for
        ``idle_timeout_ms`` stops holding it back."""
        self.control_key = control_key
        self.ooo_ms = ooo_ms
        self.idle_timeout_ms = idle_timeout_ms
        self._has_local = has_local
        # internal topic -> how many upstream tasks write to it (each must be heard from)
        self.expected = upstream_tasks
        self.stream_time = NO_WATERMARK
        self.watermark = NO_WATERMARK
        self.upstream: dict[tuple[str, str], tuple[int, bool]] = {}
        self.idle = False
        self._last_input = self._now = now_ms
        self._idle_base = NO_WATERMARK
        self._marks_off: list[int] = []
        self._marks_wm: list[int] = []
        self._batch_wm = NO_WATERMARK
        self._dirty = False
        self._sent: tuple[int, bool] | None = None
        self.local_topics = local_topics if len(local_topics) > 1 else ()
        self.topic_time: dict[str, int] = {}
        self._topic_input: dict[str, int] = {}
        self._started = now_ms

    # -- input ---------------------------------------------------------------------------------
    def begin_batch(self, now_ms: int) -> None:
        """A batch of one input partition starts: per-record marks restart from here."""
        self._marks_off.clear()
        self._marks_wm.clear()
        self._batch_wm = self.watermark
        self._now = now_ms

    def observe(self, ts: int, offset: int, topic: str = "") -> None:
        """A data record at event time ``ts`` (offset ``offset`` of the current partition of
        ``topic``)."""
        self._last_input = self._now
        if self.idle:
            self.idle = False
            self._dirty = True
        if self.local_topics:
            self._topic_input[topic] = self._now
            if ts > self.topic_time.get(topic, NO_WATERMARK):
                self.topic_time[topic] = ts
                self.stream_time = max(self.stream_time, ts)
                self._dirty = True
                self._recompute(offset)
        elif ts > self.stream_time:
            self.stream_time = ts
            self._recompute(offset)

    def _local_time(self) -> int:
        """The largest time of the task's own inputs, or with several input topics the
        smallest of theirs (NO_WATERMARK until each was heard from). With ``idle_timeout_ms``,
        a topic quiet that long (since it was last heard from, or since the task started)
        does not hold it back."""
        if not self.local_topics:
            return self.stream_time
        timeout = self.idle_timeout_ms
        times = []
        for t in self.local_topics:
            if timeout is not None and \
                    self._now - self._topic_input.get(t, self._started) >= timeout:
                continue
            times.append(self.topic_time.get(t, NO_WATERMARK))
        if not times:
            return max(self.topic_time.values(), default=NO_WATERMARK)
        return min(times)

    def control(self, topic: str, payload: bytes, offset: int,
                headers: list[tuple[str, Any]]) -> None:
        """An upstream task's watermark control record, read from repartition topic ``topic``
        (raises :class:`ControlRecordRejected` for anything that is not a genuine one)."""
        upstream = self.expected.get(topic)
        if upstream is None:
            raise ControlRecordRejected(
                f"control record on {topic}, which carries no watermarks for this task")
        task, wm, idle = parse_control(self.control_key, topic, payload, headers, upstream)
        key = (topic, task)
        old = self.upstream.get(key)
        # Monotonic per upstream task: after a crash an upstream may re-send a lower watermark.
        if old is not None and old[0] > wm:
            wm = old[0]
        if old != (wm, idle):
            self.upstream[key] = (wm, idle)
            self._dirty = True
            self._recompute(offset)

    def _candidate(self) -> int | None:
        parts: list[int] = []
        if self._has_local:
            local = self._local_time()
            if local == NO_WATERMARK:
                return None
            parts.append(local - self.ooo_ms)
        if self.expected:
            heard: dict[str, int] = {}
            for topic, _ in self.upstream:
                heard[topic] = heard.get(topic, 0) + 1
            if any(heard.get(t, 0) < n for t, n in self.expected.items()):
                return None  # an upstream task we have not heard from may still be far behind
            active = [wm for wm, idle in self.upstream.values() if not idle]
            upstream_wm = min(active) if active else max(wm for wm, _ in self.upstream.values())
            special = (END_OF_TIME, NO_WATERMARK)
            parts.append(upstream_wm if upstream_wm in special else upstream_wm - self.ooo_ms)
        return min(parts) if parts else None

    def _recompute(self, offset: int) -> None:
        cand = self._candidate()
        if cand is not None and cand > self.watermark:
            self.watermark = cand
            self._dirty = True
            self._marks_off.append(offset)
            self._marks_wm.append(cand)
        if not self.idle:
            self._idle_base = self.watermark

    def watermark_at(self, origin: Any) -> int:
        """The watermark as of ``origin`` (a consumed message of the current batch, or a record a
        timer or window emitted, which carries the watermark it was emitted at)."""
        off = origin.offset()
        if off is None or off < 0:
            wm: int = getattr(origin, "watermark", self.watermark)
            return wm
        i = bisect_right(self._marks_off, off) - 1
        return self._marks_wm[i] if i >= 0 else self._batch_wm

    # -- wall clock ----------------------------------------------------------------------------
    def tick(self, now_ms: int) -> bool:
        """Idleness: without input for ``idle_timeout_ms`` the watermark follows the wall clock.
        Returns True when the watermark moved."""
        timeout = self.idle_timeout_ms
        if timeout is None or self.watermark == END_OF_TIME or not self._has_local:
            # Behind a repartition, upstream tasks report their own idleness.
            return False
        quiet = now_ms - self._last_input
        if quiet < timeout:
            return False
        if not self.idle:
            # Idle even before any input: downstream tasks must not wait for this one.
            self.idle = True
            self._dirty = True
            self._idle_base = self.watermark
        if self.watermark == NO_WATERMARK:
            return False
        cand = self._idle_base + (quiet - timeout)
        if cand > self.watermark:
            self.watermark = cand
            self._dirty = True
            return True
        return False

    def finish(self) -> None:
        """The input ended (bounded run): every window may close."""
        self.watermark = END_OF_TIME
        self._dirty = True

    # -- checkpointed state ----------------------------------------------------------------------
    def snapshot(self) -> bytes | None:
        """The state to checkpoint, or None when nothing changed since the last snapshot."""
        if not self._dirty:
            return None
        self._dirty = False
        return orjson.dumps({
            "stream_time": self.stream_time, "watermark": self.watermark, "idle": self.idle,
            "upstream": [[t, task, wm, idle] for (t, task), (wm, idle) in self.upstream.items()],
            **({"topics": self.topic_time} if self.local_topics else {}),
        })

    def restore(self, raw: bytes) -> None:
        state = orjson.loads(raw)
        self.stream_time = int(state["stream_time"])
        self.watermark = self._batch_wm = self._idle_base = int(state["watermark"])
        self.upstream = {(t, task): (int(wm), bool(idle))
                         for t, task, wm, idle in state["upstream"]}
        self.topic_time = {str(t): int(v) for t, v in state.get("topics", {}).items()}
        self._dirty = False

    def control_payload(self, task: str) -> bytes | None:
        """What to tell downstream tasks, or None when they already know it."""
        if self.watermark == NO_WATERMARK and not self.idle:
            return None
        state = (self.watermark, self.idle)
        if state == self._sent:
            return None
        self._sent = state
        return orjson.dumps({"task": task, "watermark": self.watermark, "idle": self.idle})

    def resend(self) -> None:
        """Send the watermark again at the next checkpoint (the last one may have aborted)."""
        self._sent = None
