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
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

CATEGORIES = ("books", "games", "music", "garden", "sports", "tools", "toys", "video")
WORDS_PER_LINE = 5


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


def events(spec: Spec) -> Iterator[tuple[bytes, bytes]]:
    rng = random.Random(spec.seed)
    base_ts = 1_700_000_000_000
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    notes = ["".join(rng.choice(letters) for _ in range(8)) for _ in range(64)]
    for i in range(spec.records):
        user = f"u{rng.randrange(spec.keys):05d}" if spec.keys < 100_000 \
            else f"u{i % spec.keys:07d}"
        ev = {"id": i, "user": user, "amount": round(rng.random() * 100, 2),
              "category": CATEGORIES[i % len(CATEGORIES)], "ts": base_ts + i,
              "note": notes[i % 64]}
        yield user.encode(), json.dumps(ev, separators=(",", ":")).encode()


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
    raise ValueError(workload)


def check(workload: str, exp: Expected,
          output: list[tuple[bytes | None, bytes | None]]) -> list[str]:
    """Compare an output topic's records (in offset order per partition) with the expectation;
    returns the problems found (empty when exact)."""
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
