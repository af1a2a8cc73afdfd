"""Fraud alerts: two rules over card transactions, both alerting into one topic.

Input ``transactions``: key = the card (UTF-8 string), value = JSON ``{"card": "c-07",
"amount": 12.5, "merchant": "m-3"}`` (``schemas/card-transaction.avsc``); the record's CreateTime
is when the card was charged. The watermark trails the latest transaction by
``MAX_OUT_OF_ORDERNESS_MS`` (5 s).

Output ``fraud-alerts``: key = the card, value = JSON (``schemas/fraud-alert.avsc``), one of

- ``{"card", "rule": "small_then_large", "ts", "amount", "merchant", "small_ts",
  "small_amount"}``, timestamp ``ts``: the transaction of at least ``LARGE`` (500.00) at ``ts``
  came right after (the card's previous transaction in event time) one below ``SMALL`` (1.00)
  at most ``PATTERN_WITHIN_MS`` (1 min) earlier, the "test the stolen card with a small charge,
  then cash in" pattern. A keyed process function: each transaction waits in the card's state
  until the watermark passes it (an event-time timer at its timestamp), so the card's
  transactions are examined in event-time order however they arrived; the last transaction is
  remembered while it is small, with a timer that forgets it a minute later. Transactions behind
  the watermark when they arrive (late) are left out of this rule.
- ``{"card", "rule": "velocity", "ts", "count", "window_start"}``, timestamp ``ts``: more than
  ``VELOCITY_LIMIT`` (5) transactions of the card in ``[window_start, ts]``, a sliding 1 min
  window ending at a transaction (``count`` of them). Emitted on update: every transaction that
  leaves a window above the limit (and every out-of-order one that adds to such windows)
  raises one.

Per card, the alerts of each rule come in a defined order; the two rules' alerts interleave in
whatever order the input was batched (they are written by different operators).
"""

from __future__ import annotations

import random
import sys
from typing import Any

from streamproc import Topology, codecs, windows
from topologies._examples import BASE_MS, MINUTE, SECOND, Event, main

MAX_OUT_OF_ORDERNESS_MS = 5 * SECOND
SMALL = 1.00
LARGE = 500.00
PATTERN_WITHIN_MS = 1 * MINUTE
VELOCITY_WINDOW_MS = 1 * MINUTE
VELOCITY_LIMIT = 5


def build(app_id: str = "fraud-alerts", source: str = "transactions",
          sink: str = "fraud-alerts") -> Topology:
    topology = Topology(app_id)
    txns = topology.source(source, key=codecs.string(), value=codecs.json(),
                           max_out_of_orderness_ms=MAX_OUT_OF_ORDERNESS_MS)
    pattern = txns.group_by_key().process(
        _on_transaction, on_timer=_on_timer, store="card-pattern", name="small-then-large")
    velocity = (
        txns.group_by_key()
        .window(windows.sliding(VELOCITY_WINDOW_MS))
        .count(store="card-velocity", emit="update")
        .filter(lambda w: w["value"] > VELOCITY_LIMIT, name="over-limit")
        .process(_velocity_alert, name="velocity-alert")
    )
    pattern.merge(velocity, name="alerts").to(sink, key=codecs.string(), value=codecs.json())
    return topology


# -- rule 1: a small transaction right before a large one, in event time -------------------------
# State per card: {"pending": [[ts, amount, merchant], ...] (arrival order), "small": [ts, amount]
# or None (the last examined transaction, while it is small and at most a minute old)}.

def _on_transaction(ctx: Any, card: str, txn: dict[str, Any]) -> None:
    ts = ctx.timestamp
    if ts < ctx.watermark:
        return  # late: the card's transactions up to the watermark were examined already
    state = ctx.state.get() or {"pending": [], "small": None}
    pending = [*state["pending"], [ts, txn["amount"], txn["merchant"]]]
    ctx.state.set({"pending": pending, "small": state["small"]})
    ctx.timers.register_event_time(ts)  # examine it once the watermark passes it


def _on_timer(ctx: Any, card: str, at: int) -> None:
    state = ctx.state.get()
    if state is None:
        return
    due = sorted((p for p in state["pending"] if p[0] <= at), key=lambda p: p[0])
    rest = [p for p in state["pending"] if p[0] > at]
    small = state["small"]
    for ts, amount, merchant in due:  # in event time; ties in arrival order (a stable sort)
        if small is not None:
            if amount >= LARGE and ts - small[0] <= PATTERN_WITHIN_MS:
                ctx.emit({"card": card, "rule": "small_then_large", "ts": ts, "amount": amount,
                          "merchant": merchant, "small_ts": small[0], "small_amount": small[1]},
                         timestamp=ts)
            if all(p[0] != small[0] + PATTERN_WITHIN_MS for p in rest):
                # Not needed any more (unless a pending transaction shares its time).
                ctx.timers.delete_event_time(small[0] + PATTERN_WITHIN_MS)
        small = [ts, amount] if amount < SMALL else None
        if small is not None:
            ctx.timers.register_event_time(ts + PATTERN_WITHIN_MS)  # forget it then
    if small is not None and at >= small[0] + PATTERN_WITHIN_MS:
        small = None
    if rest or small is not None:
        ctx.state.set({"pending": rest, "small": small})
    else:
        ctx.state.delete()


# -- rule 2: too many transactions in a minute ---------------------------------------------------

def _velocity_alert(ctx: Any, card: str, window: dict[str, Any]) -> None:
    ctx.emit({"card": card, "rule": "velocity", "ts": window["end"], "count": window["value"],
              "window_start": window["start"]})


topology = build()

CARDS = tuple(f"c-{i:02d}" for i in range(1, 13))
MERCHANTS = tuple(f"m-{i}" for i in range(1, 9))


def sample(seed: int = 4, n: int = 400) -> list[Event]:
    """About ``n`` transactions of 12 cards over ~2 hours from 2024-03-01T00:00Z, in arrival
    order. Besides ordinary charges (5.00-300.00) it plants episodes: a small charge followed
    10-50 s later by a large one (alert), the same 70-120 s later (no alert), a small, an
    ordinary and a large one within a minute (no alert: the large one does not follow the small
    one), a small charge 1-4 s before a large one that arrives first (an alert if the small one
    is not late), and bursts of 6-8 charges within 40 s (velocity). Most arrive within a
    second, some up to 7 s late (beyond the out-of-orderness bound), a few 20-60 s late."""
    rng = random.Random(seed)
    events: list[tuple[int, int, str, dict[str, Any]]] = []  # (arrival, ts, card, txn)

    def charge(card: str, ts: int, amount: float, delay: int | None = None) -> None:
        r = rng.random()
        if delay is None:
            delay = (rng.randrange(1000) if r < 0.9 else rng.randrange(1000, 7000) if r < 0.98
                     else rng.randrange(20_000, 60_000))
        txn = {"card": card, "amount": round(amount, 2), "merchant": rng.choice(MERCHANTS)}
        events.append((ts + delay, ts, card, txn))

    per_card = n // len(CARDS)
    for card in CARDS:
        ts = BASE_MS + rng.randrange(5 * MINUTE)
        made = 0
        while made < per_card:
            ts += rng.randrange(5 * SECOND, 4 * MINUTE)
            kind = rng.random()
            if kind < 0.06:
                charge(card, ts, rng.uniform(0.1, 0.99))
                ts += rng.randrange(10 * SECOND, 50 * SECOND)
                charge(card, ts, rng.uniform(500, 2000))
                made += 2
            elif kind < 0.075:  # the large charge arrives first: the rule sorts them
                charge(card, ts, rng.uniform(0.1, 0.99), rng.randrange(4000, 5000))
                ts += rng.randrange(1000, 4000)
                charge(card, ts, rng.uniform(500, 2000), 0)
                made += 2
            elif kind < 0.09:
                charge(card, ts, rng.uniform(0.1, 0.99))
                ts += rng.randrange(70 * SECOND, 120 * SECOND)
                charge(card, ts, rng.uniform(500, 2000))
                made += 2
            elif kind < 0.12:
                charge(card, ts, rng.uniform(0.1, 0.99))
                for _ in range(2):
                    ts += rng.randrange(5 * SECOND, 20 * SECOND)
                    charge(card, ts, rng.uniform(5, 300))
                charge(card, ts + rng.randrange(5 * SECOND), rng.uniform(500, 2000))
                made += 4
            elif kind < 0.16:
                burst = rng.randint(6, 8)
                for _ in range(burst):
                    charge(card, ts, rng.uniform(5, 300))
                    ts += rng.randrange(2 * SECOND, 6 * SECOND)
                made += burst
            else:
                charge(card, ts, rng.uniform(0.1, 0.99) if kind < 0.2 else
                       rng.uniform(500, 2000) if kind < 0.23 else rng.uniform(5, 300))
                made += 1
    events.sort(key=lambda e: (e[0], e[2]))
    return [(card, txn, ts) for _, ts, card, txn in events]


def flush(key: str, ts: int) -> Event:
    """A charge of 0.00 to the pseudo-card ``key`` at ``ts``: it moves its partition's
    watermark."""
    return (key, {"card": key, "amount": 0.0, "merchant": "flush"}, ts)


if __name__ == "__main__":
    sys.exit(main(None, topology=topology, sample=sample, flush=flush))
