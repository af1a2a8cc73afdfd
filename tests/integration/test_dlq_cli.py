"""``streamproc dlq inspect|replay`` on the real broker: bad records of a running topology are
dead-lettered, inspected, and replayed (each exactly once) into their source topic after the
topology is fixed, where they are then processed."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamproc import CodecError, Topology, codecs
from streamproc.kafka import io
from tests import harness
from tests.harness import create_topics, running, unique

pytestmark = pytest.mark.kafka


def topology(app_id: str, src: str, out: str, *, fixed: bool) -> Topology:
    def price(order: dict[str, Any]) -> dict[str, Any]:
        if not fixed and order["currency"] != "EUR":
            raise ValueError(f"unsupported currency {order['currency']}")
        return {"id": order["id"], "eur": order["amount"] * (1 if order["currency"] == "EUR"
                                                             else 0.5)}

    t = Topology(app_id)
    (t.source(src, key=codecs.string(), value=codecs.json())
     .map(price, name="price")
     .to(out, key=codecs.string(), value=codecs.json()))
    return t


def _blocks(lines: list[str]) -> list[list[str]]:
    out: list[list[str]] = []
    for ln in lines:
        if ln.startswith("["):
            out.append([ln])
        else:
            out[-1].append(ln)
    return out


def cli(kafka: str, *args: str) -> subprocess.CompletedProcess[str]:
    return harness.cli(kafka, "dlq", *args)


def test_inspect_and_replay(kafka: str, tmp_path: Path) -> None:
    app_id, src, out = unique("orders"), unique("orders-in"), unique("orders-out")
    create_topics(kafka, (src, 2), (out, 2))
    good = [(b"o1", b'{"id": 1, "amount": 10, "currency": "EUR"}', 1000, 0),
            (b"o4", b'{"id": 4, "amount": 7, "currency": "EUR"}', 1003, 1)]
    usd = [(b"o2", b'{"id": 2, "amount": 20, "currency": "USD"}', 1001, 1)]
    broken = [(b"o3", b'{"id": 3, "amount": ', 1002, 0)]
    io.produce_timed(kafka, src, [*good[:1], *usd, *broken, *good[1:]],
                     headers=[("trace", b"t-1")])
    with running(topology(app_id, src, out, fixed=False), kafka, tmp_path / "s1"):
        assert io.wait_processed(kafka, app_id, [src])
    assert sorted(orjson.loads(r.value or b"")["id"] for r in io.read_all(kafka, out)) == [1, 4]

    shown = cli(kafka, "inspect", "--app", app_id)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[-1] == f"2 dead letter(s) in {app_id}-dlq"
    # One block per dead letter; their order in the DLQ follows batching across partitions,
    # so the blocks are compared without their "[dlq partition@offset]" prefix.
    blocks = sorted("\n".join(block).split("] ", 1)[1] for block in _blocks(lines[:-1]))
    with pytest.raises(CodecError) as decode_error:
        codecs.json().decode(broken[0][1])
    assert blocks == sorted([
        "\n".join([f"ValueError in price on {src}[1]@0",
                   "    error: unsupported currency USD",
                   "    timestamp: 1001",
                   f"    key: 2 bytes {b'o2'!r}",
                   f"    value: {len(usd[0][1])} bytes {usd[0][1]!r}",
                   "    header trace: 3 bytes b't-1'"]),
        "\n".join([f"CodecError in source-1 on {src}[0]@1",
                   f"    error: {decode_error.value}",
                   "    codec: json",
                   "    timestamp: 1002",
                   f"    key: 2 bytes {b'o3'!r}",
                   f"    value: {len(broken[0][1])} bytes {broken[0][1]!r}",
                   "    header trace: 3 bytes b't-1'"])])

    as_json = cli(kafka, "inspect", "--app", app_id, "--json", "--error-type", "ValueError")
    [record] = [orjson.loads(ln) for ln in as_json.stdout.splitlines()]
    assert record["key"] == "o2" and record["value"] == usd[0][1].decode()
    headers = dict(record["headers"])
    assert headers["streamproc.topic"] == src and headers["streamproc.offset"] == "0"
    assert headers["streamproc.error.type"] == "ValueError" and headers["trace"] == "t-1"

    dry = cli(kafka, "replay", "--app", app_id, "--error-type", "ValueError", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1] == "dry run: 1 to replay, 1 filtered out; nothing written"
    assert len(io.read_all(kafka, src)) == 4

    # The cause is fixed (USD supported); replay only the ValueErrors, once.
    done = cli(kafka, "replay", "--app", app_id, "--error-type", "ValueError")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"replayed 1 record(s) to {src}",
                                        "1 replayed, 1 filtered out"]
    again = cli(kafka, "replay", "--app", app_id)
    assert again.stdout.splitlines()[-1] == "0 replayed, 0 filtered out"

    replayed = [r for r in io.read_all(kafka, src) if r.offset > 0 and r.partition == 1
                and r.key == b"o2"]
    assert [(r.value, r.timestamp, r.headers) for r in replayed] == [
        (usd[0][1], 1001, {"trace": b"t-1"})]
    with running(topology(app_id, src, out, fixed=True), kafka, tmp_path / "s2"):
        assert io.wait_processed(kafka, app_id, [src])
    assert sorted((orjson.loads(r.value or b"")["id"], orjson.loads(r.value or b"")["eur"])
                  for r in io.read_all(kafka, out)) == [(1, 10), (2, 10.0), (4, 7)]
    # The replayed record was processed, not dead-lettered again.
    assert len(io.read_all(kafka, f"{app_id}-dlq")) == 2


def _events(stderr: str, event: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(ln) for ln in stderr.splitlines() if ln.startswith("{")]
    return [ln for ln in lines if ln["event"] == event]


def _errors(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The command's error lines; anything else on stderr (a traceback) fails the caller."""
    assert "Traceback" not in proc.stderr, proc.stderr
    return [orjson.loads(ln)["error"] for ln in proc.stderr.splitlines()
            if ln.startswith("{") and orjson.loads(ln)["level"] == "error"]


def test_replay_streams_chunks_each_its_own_transaction(kafka: str, tmp_path: Path) -> None:
    """25 dead letters, chunks of 10: a replay killed before its second commit leaves exactly
    the first chunk replayed; the next run replays the other 15 in two transactions (10, 5);
    every dead letter reaches its source topic exactly once."""
    app_id, src, out = unique("chunks"), unique("chunks-in"), unique("chunks-out")
    create_topics(kafka, (src, 2), (out, 2), (f"{app_id}-dlq", 2))
    # Recent timestamps: records from 1970 would roll a segment per batch and be deleted by
    # retention while the test reads them.
    now = int(time.time() * 1000)
    orders = [(f"o{i}".encode(), orjson.dumps({"id": i, "amount": i, "currency": "USD"}),
               now + i, i % 2) for i in range(25)]
    io.produce_timed(kafka, src, orders)
    with running(topology(app_id, src, out, fixed=False), kafka, tmp_path / "s1"):
        assert io.wait_processed(kafka, app_id, [src])
    dead = io.read_all(kafka, f"{app_id}-dlq")
    assert len(dead) == 25 and {r.partition for r in dead} == {0, 1}

    killed = harness.cli(kafka, "dlq", "replay", "--app", app_id, "--chunk-size", "10",
                         STREAMPROC_TEST_CRASH_AT="before_commit",
                         STREAMPROC_TEST_CRASH_AFTER="2")
    assert killed.returncode == -9, killed.stderr
    assert [(e["chunk"], e["read"], e["replayed"])
            for e in _events(killed.stderr, "dlq.replay.committed")] == [(1, 10, 10)]

    done = cli(kafka, "replay", "--app", app_id, "--chunk-size", "10")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"replayed 15 record(s) to {src}",
                                        "15 replayed, 0 filtered out"]
    committed = _events(done.stderr, "dlq.replay.committed")
    assert [(e["chunk"], e["read"], e["replayed"]) for e in committed] == [(1, 10, 10),
                                                                           (2, 5, 5)]
    # The group ends past every dead letter (and the markers after them), per partition.
    ends = {p: max(r.offset for r in dead if r.partition == p) for p in (0, 1)}
    final = {int(p): o for e in committed for p, o in e["offsets"].items()}
    assert all(final[p] > ends[p] for p in (0, 1)), (final, ends)
    [completed] = _events(done.stderr, "dlq.replay.completed")
    assert (completed["records"], completed["replayed"], completed["skipped"],
            completed["transactions"]) == (15, 15, 0, 2)

    originals = {p: sum(1 for o in orders if o[3] == p) for p in (0, 1)}  # 13 and 12
    replayed = [r for r in io.read_all(kafka, src) if r.offset >= originals[r.partition]]
    assert sorted((r.key, r.value, r.timestamp, r.partition) for r in replayed) == \
        sorted(orders)
    again = cli(kafka, "replay", "--app", app_id, "--chunk-size", "10")
    assert again.stdout.splitlines() == ["0 replayed, 0 filtered out"]
    assert _events(again.stderr, "dlq.replay.committed") == []


def test_expected_replay_failures_are_one_line(kafka: str) -> None:
    app_id, src = unique("forged"), unique("forged-in")
    missing = cli(kafka, "inspect", "--app", app_id)
    assert missing.returncode == 2
    assert _errors(missing) == [f"invalid setting '--app': no dead-letter topic '{app_id}-dlq' "
                                "(nothing was dead-lettered yet, or the application id is wrong)"]

    # Dead letters are anybody's to write: one naming a topic that does not exist, one naming
    # the application's own changelog.
    create_topics(kafka, (f"{app_id}-dlq", 1), (src, 1))
    io.produce_timed(kafka, f"{app_id}-dlq", [(b"k", b"v", int(time.time() * 1000), 0)],
                     headers=[("streamproc.topic", b"no-such-topic-y"),
                              ("streamproc.partition", b"zero")])
    gone = cli(kafka, "replay", "--app", app_id)
    assert gone.returncode == 2
    assert _errors(gone) == [f"invalid setting 'dlq replay': source topic 'no-such-topic-y' of "
                             f"dead letter 0@0 of {app_id}-dlq does not exist"]
    io.produce_timed(kafka, f"{app_id}-dlq", [(b"k", b"v", int(time.time() * 1000), 0)],
                     headers=[("streamproc.topic", f"{app_id}-counts-changelog".encode())])
    internal = cli(kafka, "replay", "--app", app_id, "--topic", f"{app_id}-counts-changelog")
    assert internal.returncode == 2
    assert _errors(internal) == [
        f"invalid setting 'dlq replay': dead letter 0@1 of {app_id}-dlq names "
        f"'{app_id}-counts-changelog' as its source: an internal topic of the application is "
        "never replayed into"]
    # Nothing was committed: the filters let a replay move past what it leaves alone.
    skipped = cli(kafka, "replay", "--app", app_id, "--topic", src)
    assert skipped.stdout.splitlines() == ["0 replayed, 2 filtered out"]
