"""The wordcount oracle: input lines -> the exact output every correct run must produce."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

import orjson

from streamproc.codecs import json as json_codec
from streamproc.kafka import io
from streamproc.state.store import KeyValueStore

WORDS = [f"w{i:03d}" for i in range(60)]


def make_lines(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(n)]


def expected_counts(lines: list[str]) -> Counter[str]:
    c: Counter[str] = Counter()
    for line in lines:
        c.update(line.split())
    return c


def output_sequences(bootstrap: str, topic: str) -> dict[str, list[int]]:
    """Per word, the counts in output order (all of a word's records share one partition)."""
    seqs: dict[str, list[int]] = defaultdict(list)
    for rec in sorted(io.read_all(bootstrap, topic), key=lambda r: (r.partition, r.offset)):
        seqs[(rec.key or b"").decode()].append(orjson.loads(rec.value or b"null"))
    return dict(seqs)


def assert_exactly_once(bootstrap: str, topic: str, lines: list[str]) -> None:
    """Every input word produced exactly one output record: each word's counts run 1..n with
    no gap and no repeat."""
    expected = expected_counts(lines)
    seqs = output_sequences(bootstrap, topic)
    assert sorted(seqs) == sorted(expected), "different set of words"
    bad = {w: s for w, s in seqs.items() if s != list(range(1, expected[w] + 1))}
    assert not bad, f"{len(bad)} words with gaps/repeats, e.g. " + \
        ", ".join(f"{w}: {s[:12]}... (expected 1..{expected[w]})" for w, s in list(bad.items())[:3])


def store_contents(state_dir: Path, app_id: str, store: str, partitions: int) -> dict[str, int]:
    """The committed RocksDB content of a store over all partitions (app must be stopped)."""
    out: dict[str, int] = {}
    for p in range(partitions):
        path = state_dir / app_id / store / str(p)
        if not path.exists():
            continue
        s = KeyValueStore(store, p, path, json_codec())
        s.open()
        out.update({k.decode(): v for k, v in s.items()})
        s.close()
    return out
