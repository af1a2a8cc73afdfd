"""The fault suite's oracle (reliability/verify.py) must catch what it claims to catch: a
duplicate, a lost update, a window emitted twice or wrong; and its broker arithmetic must
match the broker's."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from reliability.scenarios.broker_failure import coordinator_partition, java_hash
from reliability.verify import Outputs, Truth, verdict


class _Msg:
    def __init__(self, topic: str, key: str, value: Any) -> None:
        self._t, self._k, self._v = topic, key.encode(), json.dumps(value).encode()

    def topic(self) -> str:
        return self._t

    def key(self) -> bytes:
        return self._k

    def value(self) -> bytes:
        return self._v

    def headers(self) -> None:
        return None


class _App:
    counts, windows, late, dlq = "c", "w", "l", "d"


def _outputs(*msgs: _Msg) -> Outputs:
    out = Outputs.__new__(Outputs)  # no consumer: records are fed by hand
    out.app = _App()  # type: ignore[assignment]
    out.last, out.count_records, out.count_duplicates, out.count_gaps = {}, 0, 0, 0
    out.windows, out.window_duplicates, out.late = {}, 0, Counter()
    out.dead_letters, out.examples = 0, []
    for m in msgs:
        out._record(m)
    return out


def _truth() -> Truth:
    return Truth(records=3, per_key=Counter({"k1": 2, "k2": 1}),
                 per_window=Counter({("g0", 0): 2, ("g1", 0): 1}))


def _window(g: str, start: int, n: int) -> _Msg:
    return _Msg("w", g, {"start": start, "end": start + 1000, "value": n})


EXACT = [_Msg("c", "k1", 1), _Msg("c", "k2", 1), _Msg("c", "k1", 2),
         _window("g0", 0, 2), _window("g1", 0, 1)]


def test_an_exact_run_is_exact() -> None:
    v = verdict(_truth(), _outputs(*EXACT))
    assert (v["exact"], v["duplicates"], v["losses"], v["wrong_windows"]) == (True, 0, 0, 0)
    assert v["problems"] == []


def test_a_repeated_running_count_is_a_duplicate() -> None:
    v = verdict(_truth(), _outputs(*EXACT, _Msg("c", "k1", 2)))
    assert (v["exact"], v["duplicates"], v["losses"]) == (False, 1, 0)
    assert v["problems"] == ["count of k1 went 2 -> 2 (a duplicate)"]


def test_a_skipped_running_count_is_a_loss() -> None:
    v = verdict(_truth(), _outputs(_Msg("c", "k1", 2), _Msg("c", "k2", 1),
                                   _window("g0", 0, 2), _window("g1", 0, 1)))
    assert (v["exact"], v["duplicates"], v["losses"]) == (False, 0, 1)


def test_a_missing_final_count_is_a_loss() -> None:
    v = verdict(_truth(), _outputs(*EXACT[:2], *EXACT[3:]))
    assert (v["exact"], v["losses"]) == (False, 1)


def test_a_window_emitted_twice_or_short_is_caught() -> None:
    twice = verdict(_truth(), _outputs(*EXACT, _window("g1", 0, 1)))
    assert (twice["exact"], twice["duplicates"]) == (False, 1)
    short = verdict(_truth(), _outputs(*EXACT[:3], _window("g0", 0, 1), _window("g1", 0, 1)))
    assert (short["exact"], short["wrong_windows"], short["losses"]) == (False, 1, 1)


def test_late_records_count_towards_their_window() -> None:
    late = _Msg("l", "k1", {"id": 7, "g": "g0", "ts": 500})
    v = verdict(_truth(), _outputs(*EXACT[:3], _window("g0", 0, 1), _window("g1", 0, 1), late))
    assert (v["exact"], v["late_records"]) == (True, 1)


def test_a_dead_letter_is_not_exact() -> None:
    v = verdict(_truth(), _outputs(*EXACT, _Msg("d", "k9", "junk")))
    assert (v["exact"], v["dead_letters"]) == (False, 1)


def test_java_string_hash_and_the_coordinator_partition() -> None:
    # Values of java.lang.String.hashCode
    assert java_hash("") == 0
    assert java_hash("hello") == 99162322
    assert java_hash("polygenelubricants") == 0x80000000  # Integer.MIN_VALUE
    assert coordinator_partition("polygenelubricants", 50) == 0
    assert coordinator_partition("hello", 4) == 99162322 % 4
