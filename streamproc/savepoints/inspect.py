"""``streamproc savepoint inspect``: what a savepoint holds, for humans or as JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from streamproc.savepoints.format import Savepoint


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def summary(sp: Savepoint) -> dict[str, Any]:
    m = sp.manifest
    return {
        "id": m.id, "format_version": m.version, "application_id": m.application_id,
        "topology": m.topology, "fingerprint": m.fingerprint,
        "created_at": _iso(m.created_at_ms), "tasks": {str(k): v for k, v in m.tasks.items()},
        "source_offsets": {t: {str(p): o for p, o in parts.items()}
                           for t, parts in m.source_offsets.items()},
        "stores": {name: {"subtopology": s.subtopology, "codec": s.codec,
                          "partitions": s.partitions, "keys": s.keys,
                          "bytes": sum(f.bytes for f in s.files.values()),
                          "time_store": s.time_store,
                          "keys_per_partition": {str(p): f.records
                                                 for p, f in sorted(s.files.items())}}
                   for name, s in sorted(m.stores.items())},
        "inflight": {name: {"partitions": i.partitions, "records": i.records,
                            "ranges": {str(p): list(r) for p, r in sorted(i.ranges.items())}}
                     for name, i in sorted(m.inflight.items())},
        "watermarks": dict(sorted(m.watermarks.items())),
    }


def describe(sp: Savepoint) -> str:
    s = summary(sp)
    lines = [f"Savepoint {s['id']} (format {s['format_version']}) at {sp.root}",
             f"  application {s['application_id']!r}, topology {s['topology']}",
             f"  created {s['created_at']}, topology fingerprint {s['fingerprint'][:16]}",
             "  tasks per sub-topology: "
             + ", ".join(f"{k}: {v}" for k, v in sorted(s["tasks"].items())),
             "Source offsets (committed):"]
    for topic, parts in s["source_offsets"].items():
        lines.append(f"  {topic}: " + ", ".join(
            f"[{p}] {'none' if o is None else o}" for p, o in parts.items()))
    lines.append("Stores:" if s["stores"] else "Stores: none")
    for name, st in s["stores"].items():
        kind = " (watermarks)" if st["time_store"] else ""
        lines.append(f"  {name}{kind}: {st['keys']} keys, {st['bytes']} bytes, "
                     f"{st['partitions']} partitions, codec {st['codec']}, "
                     f"sub-topology {st['subtopology']}")
    lines.append("In-flight repartition records:" if s["inflight"] else
                 "In-flight repartition records: none")
    for name, i in s["inflight"].items():
        lines.append(f"  {name}: {i['records']} records")
    if s["watermarks"]:
        lines.append("Watermarks:")
        for task, w in s["watermarks"].items():
            lines.append(f"  task {task}: watermark {w['watermark']}, stream time "
                         f"{w['stream_time']}{', idle' if w['idle'] else ''}")
    return "\n".join(lines) + "\n"
