"""The Quix Streams contender (quixstreams==3.28.1): the benchmark workloads written the way the
Quix Streams documentation recommends — an ``Application``, ``app.topic`` with the built-in
serializers, a ``StreamingDataFrame`` pipeline (``filter``/``apply``/``group_by``/``to_topic``),
``stateful=True`` functions backed by Quix's RocksDB state with changelog topics, and for W3 a
``tumbling_window(...).reduce(...).final()`` windowed aggregation.

    python bench/contenders/quix_app.py --workload W1|W2|W3|W4 --guarantee eos|alo \
        --brokers HOST:PORT --input TOPIC --output TOPIC --group GROUP \
        --commit-interval SECONDS --state-dir DIR --stats FILE

Runs until SIGTERM: ``Application.run()`` installs its own SIGTERM/SIGINT handlers, which stop
the poll loop, commit the last checkpoint and close the consumer and producer cleanly.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from quixstreams import Application, State

# The shared per-record logic lives in bench/workloads.py (the parent of this directory).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from workloads import (
    W3_GRACE_MS,
    W3_WINDOW_MS,
    FirstSeen,
    w1_keep,
    w1_transform,
    w3_add,
    w3_init,
    w4_words,
)


def count(_value: Any, state: State[str, int]) -> int:
    """W2/W4: the running count of the current message key (Quix scopes `state` to the key)."""
    n: int = state.get("count", 0) + 1
    state.set("count", n)
    return n


def w3_first(event: dict[str, Any]) -> dict[str, Any]:
    """W3: Quix's reduce initializer builds a window's aggregate from its first value."""
    return w3_add(w3_init(), event)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", required=True, choices=["W1", "W2", "W3", "W4"])
    p.add_argument("--guarantee", required=True, choices=["eos", "alo"])
    p.add_argument("--brokers", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--commit-interval", type=float, default=1.0)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--stats", default=None)
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> Application:
    app = Application(
        broker_address=args.brokers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        state_dir=args.state_dir,
        processing_guarantee="exactly-once" if args.guarantee == "eos" else "at-least-once",
        # auto_create_topics stays at its default (True): Quix needs it to create its own
        # changelog/repartition topics. The input and output topics already exist, and for an
        # existing topic Quix only reads its config; it never alters it.
    )
    first = FirstSeen(args.stats)

    # Quix's defaults: key bytes in/out (passed through untouched), value JSON in/out using
    # Quix's built-in JSON (de)serializer (orjson underneath). Null keys (W4 lines) pass as None.
    input_topic = app.topic(args.input)
    # After W4's group_by the key is the word (a str), so the output key is encoded as UTF-8.
    output_topic = app.topic(args.output,
                             key_serializer="str" if args.workload == "W4" else "bytes")
    sdf = app.dataframe(input_topic)

    if args.workload == "W1":
        sdf = sdf.filter(first.wrap(w1_keep))
        sdf = sdf.apply(w1_transform)
    elif args.workload == "W3":
        # Windows are per message key (the user) on the Kafka timestamp, CreateTime: W3's event
        # time. The default closing strategy, "key", closes a key's windows only when that same
        # key sees later event time; "partition" closes every key's windows by the partition's
        # event time, as streamproc and the ceiling do, so the flush record at the end of each
        # partition closes them all. Output value: {"start", "end", "value": the aggregate}.
        sdf = (sdf.tumbling_window(W3_WINDOW_MS, grace_ms=W3_GRACE_MS, name="w3")
               .reduce(w3_add, first.wrap(w3_first))
               .final(closing_strategy="partition"))
    elif args.workload == "W2":
        # The input value is deserialized (Quix's default JSON) although W2 only counts keys:
        # that is what a Quix user gets from app.topic(name).
        sdf = sdf.apply(first.wrap(count), stateful=True)
    else:  # W4
        sdf = sdf.apply(first.wrap(w4_words), expand=True)  # one row per word
        # Re-key by the word through Quix's internal repartition topic (default JSON
        # serializers), so each word's count lives in exactly one partition's state.
        sdf = sdf.group_by(lambda word: word, name="word")
        sdf = sdf.apply(count, stateful=True)
    # The value is a dict (W1, W3) or an int count (W2/W4); the JSON serializer writes e.g.
    # b"17".
    sdf.to_topic(output_topic)
    return app


def main(argv: list[str] | None = None) -> int:
    build(parse_args(argv)).run()  # returns after SIGTERM, once the final commit is done
    return 0


if __name__ == "__main__":
    sys.exit(main())
