"""Instance settings: defaults < ``STREAMPROC_*`` environment variables < CLI flags.

Invalid settings fail fast with one :class:`~streamproc.errors.ConfigError` naming the setting,
its environment variable and its CLI flag.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from streamproc.errors import ConfigError
from streamproc.types import ProcessingGuarantee

ENV_PREFIX = "STREAMPROC_"


class Settings(BaseSettings):
    """Everything an instance needs besides its topology."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    brokers: str | None = Field(
        None, description="Kafka bootstrap servers; unset means the local development broker."
    )
    state_dir: Path = Field(Path(".streamproc/state"), description="Root of local RocksDB state.")
    processing_guarantee: ProcessingGuarantee = "exactly_once"
    commit_interval_ms: int = Field(1000, ge=10, le=600_000)
    instance_id: str | None = Field(
        None,
        description="Stable id of this instance (transactional.id suffix); "
        "generated once and kept in the state dir when unset.",
    )
    static_membership: bool = Field(
        True, description="Join the group with group.instance.id = {app}-{instance_id}, so a "
        "restarted instance takes its partitions back without a rebalance.")
    consume_batch_size: int = Field(5000, ge=1, le=100_000)
    poll_timeout_ms: int = Field(100, ge=1, le=10_000)
    session_timeout_ms: int = Field(15_000, ge=3000, le=300_000)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    # Kafka Streams' EOS default: bounds how long a crashed instance that never comes back
    # blocks read_committed readers with its open transaction.
    transaction_timeout_ms: int = Field(10_000, ge=1000, le=900_000)
    shutdown_timeout_ms: int = Field(30_000, ge=1000)
    state_cache_max_keys: int = Field(200_000, ge=0)
    restore_batch_size: int = Field(10_000, ge=1)
    repartition_purge_interval_ms: int = Field(
        30_000, ge=100, description="How often records of repartition topics that the group "
        "has committed are deleted (the topics have no time-based retention).")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    consumer_config: dict[str, str] = Field(
        default_factory=dict, description="Extra librdkafka consumer settings (JSON in env)."
    )
    producer_config: dict[str, str] = Field(
        default_factory=dict, description="Extra librdkafka producer settings (JSON in env)."
    )

    @field_validator("brokers")
    @classmethod
    def _brokers_not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.transaction_timeout_ms <= self.commit_interval_ms:
            raise ValueError(
                "transaction_timeout_ms must be larger than commit_interval_ms, or every "
                "transaction would time out before its checkpoint"
            )
        return self


def flag_for(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def env_for(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment plus explicit overrides (CLI flags; ``None`` = unset).

    Raises :class:`ConfigError` naming the first invalid setting.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except SettingsError as exc:
        # An environment value that cannot even be parsed (e.g. invalid JSON for a dict).
        match = re.search(r'field "(\w+)"', str(exc))
        setting = match.group(1) if match else "settings"
        raise ConfigError(f"{setting} (env {env_for(setting)}, flag {flag_for(setting)})",
                          f"cannot parse the value: {exc}") from None
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        setting = loc[0] if loc else "settings"
        if setting == "settings" or not loc:
            # A model-level check: its message says which settings conflict.
            raise ConfigError("settings", err["msg"].removeprefix("Value error, ")) from None
        where = f"{setting} (env {env_for(setting)}, flag {flag_for(setting)})"
        raise ConfigError(where, err["msg"]) from None
