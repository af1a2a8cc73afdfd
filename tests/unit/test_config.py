"""Settings (defaults < STREAMPROC_* env < explicit overrides) and librdkafka client configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamproc.config import env_for, flag_for, load_settings
from streamproc.errors import ConfigError
from streamproc.kafka.clients import consumer_config, producer_config, restore_consumer_config


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the developer's shell exports must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("STREAMPROC_"):
            monkeypatch.delenv(name)


# -- defaults and precedence -----------------------------------------------------------------
def test_defaults():
    s = load_settings()
    assert s.processing_guarantee == "exactly_once"
    assert s.commit_interval_ms == 1000
    assert s.brokers is None
    assert s.state_dir == Path(".streamproc/state")
    assert s.instance_id is None
    assert s.consume_batch_size == 5000
    assert s.poll_timeout_ms == 100
    assert s.session_timeout_ms == 15_000
    assert s.max_poll_interval_ms == 300_000
    assert s.transaction_timeout_ms == 10_000
    assert s.shutdown_timeout_ms == 30_000
    assert s.state_cache_max_keys == 200_000
    assert s.restore_batch_size == 10_000
    assert s.log_level == "info"
    assert s.log_format == "auto"
    assert s.consumer_config == {}
    assert s.producer_config == {}


def test_env_overrides_defaults(monkeypatch):
    monkeypatch.setenv("STREAMPROC_COMMIT_INTERVAL_MS", "250")
    monkeypatch.setenv("STREAMPROC_PROCESSING_GUARANTEE", "at_least_once")
    monkeypatch.setenv("STREAMPROC_BROKERS", "k1:9092,k2:9092")
    monkeypatch.setenv("STREAMPROC_STATE_DIR", "/var/lib/sp")
    monkeypatch.setenv("STREAMPROC_CONSUMER_CONFIG", '{"fetch.min.bytes": "10"}')
    s = load_settings()
    assert s.commit_interval_ms == 250
    assert s.processing_guarantee == "at_least_once"
    assert s.brokers == "k1:9092,k2:9092"
    assert s.state_dir == Path("/var/lib/sp")
    assert s.consumer_config == {"fetch.min.bytes": "10"}


def test_explicit_overrides_beat_env(monkeypatch):
    monkeypatch.setenv("STREAMPROC_COMMIT_INTERVAL_MS", "250")
    monkeypatch.setenv("STREAMPROC_PROCESSING_GUARANTEE", "at_least_once")
    s = load_settings(commit_interval_ms=500, processing_guarantee="at_most_once")
    assert s.commit_interval_ms == 500
    assert s.processing_guarantee == "at_most_once"


def test_none_override_means_unset(monkeypatch):
    monkeypatch.setenv("STREAMPROC_COMMIT_INTERVAL_MS", "250")
    s = load_settings(commit_interval_ms=None, brokers=None)
    assert s.commit_interval_ms == 250
    assert s.brokers is None


def test_cli_strings_are_parsed():
    s = load_settings(commit_interval_ms="750", static_membership="false")
    assert s.commit_interval_ms == 750
    assert s.static_membership is False


def test_settings_are_frozen():
    s = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        s.commit_interval_ms = 5  # type: ignore[misc]


def test_env_and_flag_names():
    assert env_for("commit_interval_ms") == "STREAMPROC_COMMIT_INTERVAL_MS"
    assert flag_for("commit_interval_ms") == "--commit-interval-ms"


# -- invalid values --------------------------------------------------------------------------
def _config_error(**kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(**kw)
    return info.value


def test_invalid_value_names_setting_env_and_flag():
    err = _config_error(commit_interval_ms=0)
    text = str(err)
    assert "commit_interval_ms" in text
    assert "STREAMPROC_COMMIT_INTERVAL_MS" in text
    assert "--commit-interval-ms" in text
    assert err.setting == (
        "commit_interval_ms (env STREAMPROC_COMMIT_INTERVAL_MS, flag --commit-interval-ms)")
    assert err.problem == "Input should be greater than or equal to 10"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("commit_interval_ms", 600_001),
        ("commit_interval_ms", "soon"),
        ("consume_batch_size", 0),
        ("poll_timeout_ms", 10_001),
        ("session_timeout_ms", 100),
        ("transaction_timeout_ms", 999),
        ("log_level", "verbose"),
        ("log_format", "xml"),
        ("state_cache_max_keys", -1),
    ],
)
def test_each_invalid_setting_is_named(setting, value):
    err = _config_error(**{setting: value})
    assert err.setting == f"{setting} (env {env_for(setting)}, flag {flag_for(setting)})"
    assert str(err).startswith(f"invalid setting '{err.setting}': ")


def test_invalid_env_value_names_the_env_var(monkeypatch):
    monkeypatch.setenv("STREAMPROC_CONSUME_BATCH_SIZE", "lots")
    err = _config_error()
    assert err.setting == (
        "consume_batch_size (env STREAMPROC_CONSUME_BATCH_SIZE, flag --consume-batch-size)")
    assert err.problem == "Input should be a valid integer, unable to parse string as an integer"


def test_unknown_guarantee_fails():
    err = _config_error(processing_guarantee="exactly-once")
    assert err.setting == ("processing_guarantee (env STREAMPROC_PROCESSING_GUARANTEE, "
                           "flag --processing-guarantee)")
    assert err.problem == "Input should be 'exactly_once', 'at_least_once' or 'at_most_once'"


def test_unknown_guarantee_from_env_fails(monkeypatch):
    monkeypatch.setenv("STREAMPROC_PROCESSING_GUARANTEE", "maybe_once")
    err = _config_error()
    assert "STREAMPROC_PROCESSING_GUARANTEE" in str(err)


@pytest.mark.parametrize(("txn", "commit"), [(5000, 5000), (2000, 5000)])
def test_transaction_timeout_must_exceed_commit_interval(txn, commit):
    err = _config_error(transaction_timeout_ms=txn, commit_interval_ms=commit)
    assert err.setting == "settings"
    assert err.problem == (
        "transaction_timeout_ms must be larger than commit_interval_ms, or every transaction "
        "would time out before its checkpoint")
    assert "transaction_timeout_ms" in str(err)
    assert "commit_interval_ms" in str(err)


def test_transaction_timeout_just_above_commit_interval_is_fine():
    s = load_settings(transaction_timeout_ms=5001, commit_interval_ms=5000)
    assert (s.transaction_timeout_ms, s.commit_interval_ms) == (5001, 5000)


def test_unknown_setting_fails():
    err = _config_error(commit_interval=5)
    assert err.setting == "commit_interval (env STREAMPROC_COMMIT_INTERVAL, flag --commit-interval)"
    assert err.problem == "Extra inputs are not permitted"


def test_empty_brokers_fail():
    err = _config_error(brokers="  ")
    assert "brokers" in str(err) and "must not be empty" in str(err)


def test_empty_brokers_error_names_env_and_flag():
    err = _config_error(brokers="  ")
    assert "STREAMPROC_BROKERS" in str(err)
    assert "--brokers" in str(err)


def test_invalid_json_in_dict_env_var_is_a_config_error(monkeypatch):
    monkeypatch.setenv("STREAMPROC_CONSUMER_CONFIG", "not json")
    err = _config_error()
    assert "STREAMPROC_CONSUMER_CONFIG" in str(err)


# -- librdkafka client configs ---------------------------------------------------------------
def test_consumer_config_owns_the_guarantee_keys():
    conf = consumer_config(load_settings(), "k:9092", "app", "i1")
    assert conf == {
        "group.instance.id": "app-i1",
        "bootstrap.servers": "k:9092",
        "security.protocol": "plaintext",  # streamproc/connection.py: every client says how
        "client.id": "app-consumer",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 15_000,
        "max.poll.interval.ms": 300_000,
        "fetch.min.bytes": 1,
        "queued.max.messages.kbytes": 65536,
        "group.id": "app",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "partition.assignment.strategy": "cooperative-sticky",
        "isolation.level": "read_committed",
    }


def test_consumer_config_without_static_membership():
    conf = consumer_config(load_settings(static_membership=False), "k:9092", "app", "i1")
    assert "group.instance.id" not in conf


def test_consumer_config_passes_through_user_keys():
    s = load_settings(consumer_config={"fetch.min.bytes": "100", "auto.offset.reset": "latest"},
                      session_timeout_ms=20_000)
    conf = consumer_config(s, "k:9092", "app", "i1")
    assert conf["fetch.min.bytes"] == "100"
    assert conf["auto.offset.reset"] == "latest"
    assert conf["session.timeout.ms"] == 20_000
    assert conf["isolation.level"] == "read_committed"
    assert conf["enable.auto.commit"] is False


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("isolation.level", "read_uncommitted"),
        ("enable.auto.commit", "true"),
        ("enable.auto.offset.store", "true"),
        ("group.id", "other"),
        ("partition.assignment.strategy", "range"),
    ],
)
def test_consumer_config_refuses_reserved_overrides(key, value):
    s = load_settings(consumer_config={key: value})
    with pytest.raises(ConfigError) as info:
        consumer_config(s, "k:9092", "app", "i1")
    assert info.value.setting == "consumer_config"
    assert info.value.problem == f"{key} is managed by streamproc and cannot be set"


def test_consumer_config_lists_every_reserved_key_it_refuses():
    s = load_settings(consumer_config={"isolation.level": "x", "group.id": "y", "ok": "1"})
    with pytest.raises(ConfigError) as info:
        consumer_config(s, "k:9092", "app", "i1")
    assert info.value.problem == (
        "group.id, isolation.level is managed by streamproc and cannot be set")


def test_producer_config_without_transactions():
    conf = producer_config(load_settings(), "k:9092", None, "app-producer")
    assert conf == {
        "bootstrap.servers": "k:9092",
        "security.protocol": "plaintext",  # streamproc/connection.py: every client says how
        "client.id": "app-producer",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "compression.type": "lz4",
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
    }


def test_producer_config_with_transactions():
    s = load_settings(transaction_timeout_ms=90_000)
    conf = producer_config(s, "k:9092", "app-i1", "app-producer")
    assert conf["transactional.id"] == "app-i1"
    assert conf["transaction.timeout.ms"] == 90_000
    assert conf["enable.idempotence"] is True
    assert conf["partitioner"] == "murmur2_random"


def test_producer_config_passes_through_user_keys():
    s = load_settings(producer_config={"linger.ms": "50", "compression.type": "zstd"})
    conf = producer_config(s, "k:9092", None, "p")
    assert conf["linger.ms"] == "50"
    assert conf["compression.type"] == "zstd"
    assert "transactional.id" not in conf


@pytest.mark.parametrize(("key", "value"),
                         [("transactional.id", "mine"), ("enable.idempotence", "false")])
def test_producer_config_refuses_reserved_overrides(key, value):
    s = load_settings(producer_config={key: value})
    with pytest.raises(ConfigError) as info:
        producer_config(s, "k:9092", "tx", "p")
    assert info.value.setting == "producer_config"
    assert info.value.problem == f"{key} is managed by streamproc and cannot be set"


def test_restore_consumer_config():
    conf = restore_consumer_config(load_settings(), "k:9092", "app")
    assert conf == {
        "bootstrap.servers": "k:9092",
        "security.protocol": "plaintext",  # streamproc/connection.py: every client says how
        "client.id": "app-restore",
        "group.id": "app-restore",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "auto.offset.reset": "error",
        "queued.max.messages.kbytes": 131072,
        "max.partition.fetch.bytes": 8 * 1048576,
        "fetch.wait.max.ms": 50,
    }

