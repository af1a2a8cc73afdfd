"""``streamproc dlq inspect|replay`` on the real broker: bad records of a running topology are
dead-lettered, inspected, and replayed (each exactly once) into their source topic after the
topology is fixed, where they are then processed."""

from __future__ import annotations

import subprocess
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
