"""internal_replication_factor (kafka/admin.py's replicated): the replicas and min ISR of every
internal topic."""

from __future__ import annotations

import pytest

from streamproc.config import load_settings
from streamproc.errors import ConfigError
from streamproc.kafka.admin import TopicSpec, replicated

SPECS = [TopicSpec("app-counts-changelog", 4, {"cleanup.policy": "compact"}),
         TopicSpec("app-dlq", 1)]


def test_unset_leaves_both_to_the_broker() -> None:
    assert replicated(SPECS, None, 3) == SPECS
    assert load_settings().internal_replication_factor is None


def test_three_or_more_replicas_also_set_min_insync_two() -> None:
    assert replicated(SPECS, 3, 5) == [
        TopicSpec("app-counts-changelog", 4,
                  {"cleanup.policy": "compact", "min.insync.replicas": "2"}, 3),
        TopicSpec("app-dlq", 1, {"min.insync.replicas": "2"}, 3)]


def test_fewer_than_three_keep_the_brokers_min_insync() -> None:
    assert replicated(SPECS, 2, 3) == [
        TopicSpec("app-counts-changelog", 4, {"cleanup.policy": "compact"}, 2),
        TopicSpec("app-dlq", 1, {}, 2)]
    assert replicated(SPECS, 1, 1)[0].replication == 1


def test_more_replicas_than_brokers_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"internal_replication_factor.*3 replicas, but the "
                       r"cluster has 1 broker$"):
        replicated([TopicSpec("app-counts-changelog", 4)], 3, 1)


def test_with_nothing_to_create_the_brokers_up_do_not_matter() -> None:
    # A broker down for a rolling restart: metadata lists 2, the topics exist already.
    assert replicated([], 3, 2) == []


@pytest.mark.parametrize("bad", ["0", "-1", "33", "three"])
def test_the_setting_is_checked(bad: str) -> None:
    with pytest.raises(ConfigError, match="internal_replication_factor"):
        load_settings(internal_replication_factor=bad)
