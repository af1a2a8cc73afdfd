"""The benchmark workloads: input generation, the per-record logic every contender runs, and the
exact expected output.

Every contender (streamproc, Quix Streams, the bare confluent-kafka ceiling) imports the *same*
functions below and wires them up in its own idiomatic way, so the measured difference is the
framework, not the business logic. Pure standard library: it is imported from Quix Streams' own
virtualenv too.

Input records (W1, W2, W5, W6) are JSON events of about 100 bytes keyed by user id::

    key   b"u00042"
    value {"id":123,"user":"u00042","amount":57.31,"category":"books","ts":1700000000123,
           "note":"k3j9z0aq"}

W4 input records are JSON lines of five words (vocabulary of ``keys`` words), no key::

    value {"id":123,"text":"w00017 w04411 w00230 w09999 w00001"}

W3 input records are the same events, but each carries its event time twice: as the Kafka
timestamp (CreateTime, which every contender windows on) and as "ts". About 5% of them are out
of order (moved back by up to 3 s, always within the grace period), and the input ends with one
"flush" record per partition whose event time closes every data window.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

CATEGORIES = ("books", "games", "music", "garden", "sports", "tools", "toys", "video")
WORDS_PER_LINE = 5
BASE_TS = 1_700_000_000_000  # a multiple of W3_WINDOW_MS: the first window starts with the data

# W3: tumbling 10 s event-time windows, closed (and emitted once) when the partition's event
# time passes end + grace.
W3_WINDOW_MS = 10_000
W3_GRACE_MS = 5_000
# The event-time rate scales with the key count so that a window holds this many records per
# key on average: a real aggregate per (key, window), not one window per record.
W3_PER_KEY_WINDOW = 4
W3_LATE_SHARE = 0.05
W3_MAX_LATE_MS = 3_000  # < W3_GRACE_MS: no record may be dropped as late
W3_FLUSH_PREFIX = "flush-p"


# -- the logic, shared by every contender ---------------------------------------------------
def w1_keep(event: dict[str, Any]) -> bool:
    """W1 filter: about half the events (amount is uniform in [0, 100))."""
    return bool(event["amount"] >= 50.0)


def w1_transform(event: dict[str, Any]) -> dict[str, Any]:
    """W1 transform: project, convert to integer cents, normalise the category."""
    return {"id": event["id"], "user": event["user"],
            "amount_cents": round(event["amount"] * 100),
            "category": event["category"].upper()}


def w4_words(line: dict[str, Any]) -> list[str]:
    """W4 split: a line's words."""
    words: list[str] = line["text"].split()
    return words


def w3_init() -> dict[str, Any]:
    """W3: the empty aggregate of a window."""
    return {"sum": 0.0, "count": 0}


def w3_add(acc: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """W3: a window's aggregate with one more event. A new dict, never a mutation: a framework
    may still hold the previous aggregate (a cache, a pending state write)."""
    return {"sum": acc["sum"] + event["amount"], "count": acc["count"] + 1}


class FirstSeen:
    """Writes the wall-clock time of the first input record to a stats file, once.

    Wrapped around each contender's first per-record function: a bool check per record, the
    same cost for everyone. The harness measures throughput from this instant (so process
    start-up and the group join are not counted) to the instant all input is committed.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.seen = path is None

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def first(*args: Any) -> Any:
            if not self.seen:
                self.mark()
            return fn(*args)
        return first

    def mark(self) -> None:
        self.seen = True
        assert self.path is not None
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"first_consumed": time.time(), "pid": os.getpid()}, f)
        os.replace(tmp, self.path)


# -- input generation and expected results ---------------------------------------------------
@dataclass(frozen=True)
class Spec:
    workload: str            # "events" or "lines"
    records: int
    keys: int
    seed: int = 7


def _event_dicts(spec: Spec) -> Iterator[dict[str, Any]]:
    rng = random.Random(spec.seed)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    notes = ["".join(rng.choice(letters) for _ in range(8)) for _ in range(64)]
    for i in range(spec.records):
        user = f"u{rng.randrange(spec.keys):05d}" if spec.keys < 100_000 \
            else f"u{i % spec.keys:07d}"
        yield {"id": i, "user": user, "amount": round(rng.random() * 100, 2),
               "category": CATEGORIES[i % len(CATEGORIES)], "ts": BASE_TS + i,
               "note": notes[i % 64]}


def _encode(ev: dict[str, Any]) -> bytes:
    return json.dumps(ev, separators=(",", ":")).encode()


def events(spec: Spec) -> Iterator[tuple[bytes, bytes]]:
    for ev in _event_dicts(spec):
        yield ev["user"].encode(), _encode(ev)


def w3_events(spec: Spec) -> Iterator[tuple[bytes, bytes, int]]:
    """W3 data records (key, value, event time), without the flush records.

    The same users and amounts as ``events``; event time advances so that a window holds about
    ``W3_PER_KEY_WINDOW`` records per key. A separate generator picks the out-of-order records,
    so the events themselves do not depend on it.
    """
    late = random.Random(spec.seed * 1_000 + 3)
    per_window = spec.keys * W3_PER_KEY_WINDOW
    for ev in _event_dicts(spec):
        t = BASE_TS + ev["id"] * W3_WINDOW_MS // per_window
        if late.random() < W3_LATE_SHARE:
            t -= late.randint(1, W3_MAX_LATE_MS)
        ev["ts"] = t
        yield ev["user"].encode(), _encode(ev), t


def w3_window_start(ts: int) -> int:
    return ts - ts % W3_WINDOW_MS


def w3_flush(spec: Spec, partitions: int) -> list[tuple[bytes, bytes, int, int]]:
    """One record per input partition (key, value, event time, partition), produced after the
    data: its event time is a window past the last data window's end + grace, so every data
    window closes in every partition (frameworks close windows only when event time advances).
    Its own window never closes; ``check`` ignores the flush keys anyway."""
    last_end = max(w3_window_start(t) for _, _, t in w3_events(spec)) + W3_WINDOW_MS
    t = last_end + W3_GRACE_MS + W3_WINDOW_MS
    out = []
    for p in range(partitions):
        user = f"{W3_FLUSH_PREFIX}{p}"
        ev = {"id": -1 - p, "user": user, "amount": 0.0, "category": CATEGORIES[0], "ts": t,
              "note": "flush"}
        out.append((user.encode(), _encode(ev), t, p))
    return out


def lines(spec: Spec) -> Iterator[tuple[None, bytes]]:
    rng = random.Random(spec.seed)
    vocab = [f"w{i:05d}" for i in range(spec.keys)]
    for i in range(spec.records):
        text = " ".join(rng.choice(vocab) for _ in range(WORDS_PER_LINE))
        yield None, json.dumps({"id": i, "text": text}, separators=(",", ":")).encode()


def generate(spec: Spec) -> Iterator[tuple[bytes | None, bytes]]:
    return events(spec) if spec.workload == "events" else lines(spec)


@dataclass
class Expected:
    """What a correct run writes to the output topic (no failures: exactly once either way)."""

    output_records: int
    # W1: sum of amount_cents over the kept events; W2/W4: final count per key.
    cents: int = 0
    final: dict[str, int] | None = None
    # W3: (key, window start) -> (sum of amount, count), for every window with data.
    windows: dict[tuple[str, int], tuple[float, int]] | None = None


def expected(workload: str, spec: Spec) -> Expected:
    if workload == "W1":
        kept = [e for e in (json.loads(v) for _, v in events(spec)) if w1_keep(e)]
        return Expected(len(kept), cents=sum(w1_transform(e)["amount_cents"] for e in kept))
    if workload in ("W2", "W5", "W6"):
        counts = Counter(k.decode() for k, _ in events(spec))
        return Expected(spec.records, final=dict(counts))
    if workload == "W4":
        counts = Counter(w for _, v in lines(spec) for w in w4_words(json.loads(v)))
        return Expected(sum(counts.values()), final=dict(counts))
    if workload == "W3":
        # Summed in input order: the windows' sums come out exactly as the contenders' do
        # (per key, a partition's records are in input order), the tolerance is only a margin.
        windows: dict[tuple[str, int], tuple[float, int]] = {}
        for k, v, t in w3_events(spec):
            wk = (k.decode(), w3_window_start(t))
            total, n = windows.get(wk, (0.0, 0))
            windows[wk] = (total + json.loads(v)["amount"], n + 1)
        return Expected(len(windows), windows=windows)
    raise ValueError(workload)


def check(workload: str, exp: Expected,
          output: list[tuple[bytes | None, bytes | None]]) -> list[str]:
    """Compare an output topic's records (in offset order per partition) with the expectation;
    returns the problems found (empty when exact)."""
    if workload in ("W3", "W3R"):  # W3R: W3 behind a repartition (bench/propagation.py)
        return check_windows(exp, output)
    problems: list[str] = []
    if len(output) != exp.output_records:
        problems.append(f"{len(output)} output records, expected {exp.output_records}")
    if workload == "W1":
        cents = 0
        for _, v in output:
            cents += json.loads(v or b"null")["amount_cents"]
        if cents != exp.cents:
            problems.append(f"sum of amount_cents {cents}, expected {exp.cents}")
    else:
        final: dict[str, int] = {}
        for k, v in output:
            key = (k or b"").decode()
            n = json.loads(v or b"null")
            if n <= final.get(key, 0):
                problems.append(f"count for {key} went {final.get(key)} -> {n}")
                break
            final[key] = n
        if final != exp.final:
            diff = [k for k in set(final) | set(exp.final or {})
                    if final.get(k) != (exp.final or {}).get(k)]
            problems.append(f"{len(diff)} keys with a wrong final count, e.g. "
                            f"{[(k, final.get(k), (exp.final or {}).get(k)) for k in diff[:3]]}")
    return problems


def check_windows(exp: Expected, output: list[tuple[bytes | None, bytes | None]]) -> list[str]:
    """W3: every data window exactly once (none missing, none twice, none unexpected) with its
    count exact and its sum within 1e-6 relative (compared at 2 decimals, as amounts are)."""
    want = exp.windows or {}
    got: dict[tuple[str, int], tuple[float, int]] = {}
    problems: list[str] = []
    twice: list[tuple[str, int]] = []
    for k, v in output:
        key = (k or b"").decode()
        if key.startswith(W3_FLUSH_PREFIX):  # the flush records' own windows are not data
            continue
        try:
            w = json.loads(v or b"null")
            start, end = int(w["start"]), int(w["end"])
            total, n = float(w["value"]["sum"]), int(w["value"]["count"])
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"malformed output record {k!r}: {v!r} ({exc!r})")
            break
        if end - start != W3_WINDOW_MS or start % W3_WINDOW_MS:
            problems.append(f"not a {W3_WINDOW_MS} ms tumbling window: {key} [{start}, {end})")
            break
        if (key, start) in got:
            twice.append((key, start))
        got[(key, start)] = (total, n)
    if twice:
        problems.append(f"{len(twice)} windows emitted more than once, e.g. {twice[:3]}")
    missing = [wk for wk in want if wk not in got]
    if missing:
        problems.append(f"{len(missing)} of {len(want)} windows missing, e.g. {missing[:3]}")
    extra = [wk for wk in got if wk not in want]
    if extra:
        problems.append(f"{len(extra)} unexpected windows, e.g. {extra[:3]}")
    wrong = [(wk, got[wk], want[wk]) for wk in want if wk in got and not (
        got[wk][1] == want[wk][1]
        and math.isclose(round(got[wk][0], 2), round(want[wk][0], 2), rel_tol=1e-6))]
    if wrong:
        problems.append(f"{len(wrong)} windows with a wrong (sum, count), e.g. "
                        f"{[(wk, g, e) for wk, g, e in wrong[:3]]}")
    return problems
