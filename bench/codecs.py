"""Codec throughput: records/s decoded and encoded on one thread, per codec, for the same
logical records, against confluent-kafka's own Avro (de)serializer on the same registry.

    python bench/codecs.py [--records 10000] [--reps 5]

Two records: ``sensor`` (schemas/sensor-reading.avsc: sensor_id string, ts long as
timestamp-millis, temperature double) and ``wide`` (10 fields: strings, long, int, double,
boolean, enum, optional string, array of strings). Contenders: JSON (``codecs.json()``,
orjson), a pydantic model as JSON (``codecs.model``), Avro plain (``codecs.avro``, dicts and
``model=True``), Avro single-object, Avro in the registry wire format (``codecs.registry_avro``)
and confluent-kafka's ``AvroDeserializer``/``AvroSerializer`` on the same ``mock://`` registry
(the peer: what a confluent-kafka user writes by hand), plus bare fastavro as the floor.

Each rep runs every contender once on the same ``--records`` distinct records, interleaved
(A B C ... A B C ...) so that drift on the machine hits all alike; the table gives the median.
Rates are per second of the thread's CPU time (not wall time), like bench/hotpath.py.
Values decoded by every Avro contender are checked equal before timing. Avro decodes ts to a
datetime (its logical type), JSON keeps the integer: that conversion is part of the cost.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pydantic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import schemaless_reader, schemaless_writer

from streamproc import codecs
from streamproc.codecs.registry import CodecTarget, RegistrySettings

REGISTRY = RegistrySettings("mock://bench-codecs")
SENSOR_SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "sensor-reading.avsc"
WIDE_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "Order", "namespace": "bench.codecs",
    "fields": [
        {"name": "order_id", "type": "string"},
        {"name": "customer_id", "type": "string"},
        {"name": "ts", "type": "long"},
        {"name": "amount", "type": "double"},
        {"name": "quantity", "type": "int"},
        {"name": "currency", "type": {"type": "enum", "name": "Currency",
                                      "symbols": ["EUR", "USD", "GBP", "JPY"]}},
        {"name": "express", "type": "boolean"},
        {"name": "region", "type": "string"},
        {"name": "coupon", "type": ["null", "string"], "default": None},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
    ],
}


class SensorReading(pydantic.BaseModel):
    sensor_id: str
    ts: int
    temperature: float


class Order(pydantic.BaseModel):
    order_id: str
    customer_id: str
    ts: int
    amount: float
    quantity: int
    currency: str
    express: bool
    region: str
    coupon: str | None = None
    tags: list[str]


def sensor_records(n: int, rng: random.Random) -> list[dict[str, Any]]:
    return [{"sensor_id": f"sensor-{rng.randrange(1000)}",
             "ts": 1_709_251_200_000 + i * 250 + rng.randrange(250),
             "temperature": round(rng.gauss(20, 5), 2)} for i in range(n)]


def wide_records(n: int, rng: random.Random) -> list[dict[str, Any]]:
    return [{"order_id": f"o-{i:09d}", "customer_id": f"c-{rng.randrange(100_000):06d}",
             "ts": 1_709_251_200_000 + i * 17, "amount": round(rng.uniform(1, 500), 2),
             "quantity": rng.randrange(1, 10),
             "currency": rng.choice(["EUR", "USD", "GBP", "JPY"]),
             "express": rng.random() < 0.2, "region": rng.choice(["eu-west", "us-east", "ap"]),
             "coupon": f"SAVE{rng.randrange(50)}" if rng.random() < 0.3 else None,
             "tags": rng.sample(["gift", "fragile", "bulk", "priority", "return"],
                                rng.randrange(0, 3))} for i in range(n)]


Fn = Callable[[Any], Any]


def contenders(schema: Any, model: type[pydantic.BaseModel], topic: str,
               ) -> dict[str, tuple[Fn, Fn, Callable[[dict[str, Any]], Any]]]:
    """name -> (decode, encode, to the object that contender encodes)."""
    client = codecs.registry_client(REGISTRY)
    ctx = SerializationContext(topic, MessageField.VALUE)
    plain = codecs.avro(schema)
    parsed = plain.schema.parsed
    avro_model = codecs.avro(schema, model=True)
    single = codecs.avro(schema, framing="single_object")
    registry = codecs.registry_avro(schema).bind(CodecTarget(topic, "value", REGISTRY))
    pyd = codecs.model(model)
    js = codecs.json()
    # The peer registers the same schema text under the same subject: same id, same bytes.
    c_ser = AvroSerializer(client, plain.schema.text)
    c_de = AvroDeserializer(client, plain.schema.text)

    def bare_read(b: bytes) -> Any:
        return schemaless_reader(BytesIO(b), parsed, None)

    def bare_write(obj: Any) -> bytes:
        fo = BytesIO()
        schemaless_writer(fo, parsed, obj)
        return fo.getvalue()

    def as_is(r: dict[str, Any]) -> Any:
        return r

    gen = avro_model.model
    assert gen is not None
    return {
        "json (orjson)": (js.decode, js.encode, as_is),
        "pydantic model (JSON)": (pyd.decode, pyd.encode, lambda r: model(**r)),
        "avro plain": (plain.decode, plain.encode, as_is),
        "avro plain, model=True": (avro_model.decode, avro_model.encode, lambda r: gen(**r)),
        "avro single_object": (single.decode, single.encode, as_is),
        "registry_avro (ours)": (registry.decode, registry.encode, as_is),
        "confluent AvroDeserializer/Serializer": (lambda b: c_de(b, ctx),
                                                  lambda o: c_ser(o, ctx), as_is),
        "bare fastavro (floor, no checks)": (bare_read, bare_write, as_is),
    }


def timed(fn: Fn, items: list[Any]) -> float:
    """Records per second of this thread's CPU time: on a shared machine, wall time also
    counts the time other processes held the core."""
    gc.collect()
    start = time.thread_time()
    for x in items:
        fn(x)
    return len(items) / (time.thread_time() - start)


def measure(label: str, schema: Any, model: type[pydantic.BaseModel],
            records: list[dict[str, Any]], reps: int) -> dict[str, dict[str, float]]:
    cs = contenders(schema, model, f"bench-{label}")
    inputs = {name: [to(r) for r in records] for name, (_, _, to) in cs.items()}
    encoded = {name: [enc(o) for o in inputs[name]] for name, (_, enc, _) in cs.items()}
    # Sanity before timing: every Avro contender reads the same values from its own bytes, the
    # registry bytes are the peer's bytes, and JSON contenders read back what they wrote.
    reference = [cs["avro plain"][0](b) for b in encoded["avro plain"]]
    for name, (dec, _, _) in cs.items():
        got = [dec(b) for b in encoded[name][:200]]
        if isinstance(got[0], pydantic.BaseModel):
            got = [g.model_dump() for g in got]
        want = records[:200] if "json" in name or "pydantic" in name else reference[:200]
        assert got == want, f"{name} decodes to something else"
    assert encoded["registry_avro (ours)"] == encoded["confluent AvroDeserializer/Serializer"]
    runs: dict[str, dict[str, list[float]]] = {n: {"decode": [], "encode": []} for n in cs}
    for _ in range(reps):
        for name, (dec, enc, _) in cs.items():
            runs[name]["decode"].append(timed(dec, encoded[name]))
            runs[name]["encode"].append(timed(enc, inputs[name]))
    return {n: {d: statistics.median(v) for d, v in r.items()} for n, r in runs.items()}


def table(results: dict[str, dict[str, dict[str, float]]], direction: str) -> str:
    peer = "confluent AvroDeserializer/Serializer"
    labels = list(results)
    head = "| codec | " + " | ".join(
        f"{lb} rec/s | {lb} vs json | {lb} vs confluent" for lb in labels) + " |"
    lines = [head, "| :-- | " + " | ".join("--: | --: | --:" for _ in labels) + " |"]
    for name in results[labels[0]]:
        cells = []
        for lb in labels:
            r = results[lb]
            v = r[name][direction]
            cells.append(f"{v:,.0f} | {v / r['json (orjson)'][direction]:.2f}x | "
                         f"{v / r[peer][direction]:.2f}x")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    import confluent_kafka
    import fastavro
    import orjson

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, "
            f"fastavro {fastavro.__version__}, orjson {orjson.__version__}, "
            f"pydantic {pydantic.VERSION}, confluent-kafka {confluent_kafka.__version__}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=10_000, help="distinct records per run")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions (median)")
    args = parser.parse_args()
    if args.records < 200 or args.reps < 1:
        parser.error("--records must be >= 200 and --reps >= 1")
    rng = random.Random(42)
    started = time.perf_counter()
    results = {
        "sensor": measure("sensor", str(SENSOR_SCHEMA), SensorReading,
                          sensor_records(args.records, rng), args.reps),
        "wide": measure("wide", WIDE_SCHEMA, Order, wide_records(args.records, rng), args.reps),
    }
    print(f"Machine: {machine()}")
    print(f"{args.records:,} records x {args.reps} interleaved reps, median records per CPU "
          f"second, one thread ({time.perf_counter() - started:.0f} s wall)\n")
    print("Decode (bytes -> dict or model)\n")
    print(table(results, "decode"))
    print("\nEncode (dict or model -> bytes)\n")
    print(table(results, "encode"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
