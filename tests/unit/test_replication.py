"""internal_replication_factor (kafka/admin.py's replicated): the replicas and min ISR of every
internal topic."""

from __future__ import annotations

import threading

import pytest

from streamproc.config import load_settings
from streamproc.errors import ConfigError
from streamproc.kafka.admin import TopicAdmin, TopicSpec, replicated

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


class _Metadata:
    def __init__(self, brokers: int) -> None:
        self.brokers = {i: object() for i in range(brokers)}


class _Admin:
    """An AdminClient whose cluster comes up one broker per metadata request."""

    def __init__(self, *ups: int) -> None:
        self.ups = list(ups)

    def list_topics(self, timeout: float) -> _Metadata:
        return _Metadata(self.ups.pop(0) if len(self.ups) > 1 else self.ups[0])


def _topic_admin(*ups: int) -> TopicAdmin:
    admin = TopicAdmin.__new__(TopicAdmin)
    admin._admin = _Admin(*ups)  # type: ignore[assignment]
    admin._timeout_s = 1.0
    return admin


def test_a_starting_cluster_is_waited_for_until_enough_brokers_are_up() -> None:
    stop = threading.Event()
    assert _topic_admin(1, 2, 3).brokers_up(3, timeout_s=30, stop=_NoWait(stop)) == 3


def test_too_few_brokers_after_the_wait_are_what_the_check_sees() -> None:
    assert _topic_admin(1).brokers_up(3, timeout_s=0.01) == 1


class _NoWait:
    """A stop event whose wait returns at once (not set): the test does not sleep."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def wait(self, _timeout: float) -> bool:
        return self.event.is_set()
