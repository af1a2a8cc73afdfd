"""Standby placement (streamproc/runtime/standby.py): the range assignor's arithmetic, where
standbys go, and the property the rule exists for: under range, every task a single failure
moves lands on an instance that holds its standby."""

from __future__ import annotations

import pytest

from streamproc.config import Settings
from streamproc.runtime.standby import placement, range_owner, standby_hosts
from streamproc.types import TaskId


def _range(members: list[str], partitions: int) -> dict[int, str]:
    """The range assignor as Kafka documents it, written out the long way."""
    per, extra = divmod(partitions, len(members))
    out, start = {}, 0
    for i, m in enumerate(members):
        n = per + (1 if i < extra else 0)
        for p in range(start, start + n):
            out[p] = m
        start += n
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("partitions", [1, 2, 3, 4, 6, 7, 12, 13, 64])
def test_range_owner_is_the_range_assignor(n: int, partitions: int) -> None:
    members = [f"m{i}" for i in range(n)]
    expected = _range(members, partitions)
    assert {p: range_owner(p, members, partitions) for p in range(partitions)} == expected


def test_standby_hosts_follow_the_owners_failover_order() -> None:
    live = ["c", "a", "b"]  # any order: the rule sorts
    # 6 partitions over a, b, c: a 0-1, b 2-3, c 4-5. Without a, b gets 0-2 and c 3-5.
    assert standby_hosts(0, 6, "a", live, 1) == ["b"]
    assert standby_hosts(3, 6, "b", live, 1) == ["c"]  # without b: a 0-2, c 3-5
    assert standby_hosts(2, 6, "b", live, 1) == ["a"]
    # Two replicas: where it goes without the owner, then without that one too.
    assert standby_hosts(0, 6, "a", live, 2) == ["b", "c"]
    assert standby_hosts(5, 6, "c", live, 2) == ["b", "a"]
    # More replicas than other instances: every other instance, once.
    assert standby_hosts(0, 6, "a", live, 5) == ["b", "c"]
    assert standby_hosts(0, 6, "a", ["a"], 1) == []
    assert standby_hosts(0, 6, None, [], 1) == []


def test_an_unclaimed_task_counts_the_owner_range_would_pick() -> None:
    # Nobody claims partition 4 (its owner died, the new one has not published yet): range
    # over a, b, c gives it to c, so the standby is where it goes without c.
    assert standby_hosts(4, 6, None, ["a", "b", "c"], 1) == ["b"]
    # An owner that is not live counts as unclaimed.
    assert standby_hosts(4, 6, "gone", ["a", "b", "c"], 1) == ["b"]


@pytest.mark.parametrize("n", range(2, 8))
def test_a_single_failure_moves_every_task_to_its_standby(n: int) -> None:
    members = [f"i{k:02d}" for k in range(n)]
    for partitions in range(1, 3 * n + 2):
        before = _range(members, partitions)
        standby = {p: standby_hosts(p, partitions, before[p], members, 1) for p in before}
        assert all(len(h) == 1 and h[0] != before[p] for p, h in standby.items())
        for dead in members:
            after = _range([m for m in members if m != dead], partitions)
            moved = {p for p in before if after[p] != before[p]}
            assert moved >= {p for p in before if before[p] == dead}
            missed = {p: (before[p], after[p], standby[p][0]) for p in moved
                      if after[p] != standby[p][0]}
            assert missed == {}, (n, partitions, dead)


def test_placement_is_what_this_instance_holds_of_the_rule() -> None:
    live = frozenset({"a", "b"})
    owners = {TaskId(0, 0): "a", TaskId(0, 1): "a", TaskId(0, 2): "b", TaskId(0, 3): "b"}
    stateful = {0: 4}
    # With two instances each keeps the standbys of the other's tasks.
    assert placement(stateful, (live, owners), "a", 1, frozenset()) == {TaskId(0, 2),
                                                                       TaskId(0, 3)}
    assert placement(stateful, (live, owners), "b", 1, frozenset()) == {TaskId(0, 0),
                                                                       TaskId(0, 1)}
    # A task running here is never a standby here (its claim may not be published yet).
    assert placement(stateful, (live, owners), "a", 1, frozenset({TaskId(0, 2)})) == {
        TaskId(0, 3)}
    # Only stateful sub-topologies have standbys; an instance not in the registry yet
    # keeps none (nobody else counts on it).
    assert placement({}, (live, owners), "a", 1, frozenset()) == set()
    assert placement(stateful, (live, owners), "c", 1, frozenset()) == set()


def test_every_instance_agrees_and_nothing_is_placed_twice() -> None:
    live = frozenset({"x1", "x2", "x3", "x4"})
    stateful = {0: 8, 2: 3}
    owners: dict[TaskId, str] = {}
    for sub, parts in stateful.items():
        ranged = _range(sorted(live), parts)
        owners.update({TaskId(sub, p): ranged[p] for p in range(parts)})
    held = {me: placement(stateful, (live, owners), me, 2, frozenset(
        t for t, o in owners.items() if o == me)) for me in live}
    for tid, owner in owners.items():
        hosts = {me for me, tasks in held.items() if tid in tasks}
        assert owner not in hosts and len(hosts) == 2, tid


def test_standbys_need_the_registry() -> None:
    with pytest.raises(ValueError, match=r"num_standby_replicas needs the .* set http_port"):
        Settings(num_standby_replicas=1)
    with pytest.raises(ValueError, match="keep http_state_enabled"):
        Settings(num_standby_replicas=1, http_port=0, http_state_enabled=False)
    assert Settings(num_standby_replicas=2, http_port=0).num_standby_replicas == 2
    with pytest.raises(ValueError, match="num_standby_replicas"):
        Settings(num_standby_replicas=9, http_port=0)
