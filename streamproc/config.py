"""Instance settings: defaults < ``STREAMPROC_*`` environment variables < CLI flags.

Invalid settings fail fast with one :class:`~streamproc.errors.ConfigError` naming the setting,
its environment variable and its CLI flag.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict, SettingsError

from streamproc.codecs.registry import RegistrySettings
from streamproc.connection import ConnectionSettings
from streamproc.errors import ConfigError
from streamproc.names import name_problem
from streamproc.types import ProcessingGuarantee

ENV_PREFIX = "STREAMPROC_"


class Settings(ConnectionSettings):
    """Everything an instance needs besides its topology (the Kafka connection settings come
    from :class:`~streamproc.connection.ConnectionSettings`)."""

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
    workers: int = Field(
        1, ge=1, le=256, description="Instance processes of this application on this machine "
        "(Python runs one core per process), under one supervisor that restarts a worker that "
        "dies; worker i keeps its state and instance id in {state_dir}/worker-i and serves "
        "HTTP on http_port+1+i, the supervisor the probes, /metrics and /status of all on "
        "http_port.")
    static_membership: bool = Field(
        True, description="Join the group with group.instance.id = {app}-{instance_id}, so a "
        "restarted instance takes its partitions back without a rebalance.")
    leave_group_on_shutdown: bool = Field(
        False, description="On a clean stop, leave the consumer group after the final "
        "checkpoint, so the other instances take this one's tasks at once instead of after "
        "session_timeout_ms: for scaling in. Keep it false for restarts (rolling updates), "
        "where a static member that stays gets its partitions back without a rebalance.")
    partition_assignor: Literal["auto", "range", "cooperative-sticky"] = Field(
        "auto", description="How the group assigns partitions. auto: range when a stateful "
        "sub-topology shares the group with others (cooperative-sticky balances partitions, "
        "not stateful tasks: one instance could get all the state), else cooperative-sticky "
        "(rebalances move only what changes).")
    num_standby_replicas: int = Field(
        0, ge=0, le=8, description="Warm copies of every stateful task on other instances, "
        "kept up to date from its changelog, so a task that moves restores only the delta "
        "(placed over the instances of the {app}-instances registry: needs http_port).")
    consume_batch_size: int = Field(5000, ge=1, le=100_000)
    poll_timeout_ms: int = Field(100, ge=1, le=10_000)
    session_timeout_ms: int = Field(15_000, ge=3000, le=300_000)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    # Kafka Streams' EOS default: bounds how long a crashed instance that never comes back
    # blocks read_committed readers with its open transaction.
    transaction_timeout_ms: int = Field(10_000, ge=1000, le=900_000)
    shutdown_timeout_ms: int = Field(30_000, ge=1000)
    startup_timeout_ms: int | None = Field(
        None, ge=1000, description="How long a start waits for the Kafka cluster to answer "
        "(retrying with a kafka.unreachable line, backing off to one a 30 s) before it fails; "
        "unset: as long as it takes, so that instances and brokers may start in any order.")
    state_cache_max_keys: int = Field(200_000, ge=0)
    restore_batch_size: int = Field(10_000, ge=1)
    until: str | None = Field(
        None, description="Bounded run: 'end' (every source partition's end offset when the run "
        "starts) or an ISO-8601 datetime / epoch ms (per partition, stop before the first record "
        "timestamped at or after it); then every window closes, the run commits and exits 0.")
    from_datetime: str | None = Field(
        None, description="Where the group has no committed offset for a source partition, "
        "start at its first record timestamped at or after this ISO-8601 datetime / epoch ms "
        "(instead of the earliest): a replay into a new application id from a point in time.")
    from_savepoint: Path | None = Field(
        None, description="Start from this savepoint directory (streamproc savepoint create): "
        "its state, offsets and in-flight records are written into this application's topics "
        "once, when it has no state yet; restarts with the same flag just run.")
    savepoint_drop: str | None = Field(
        None, description="Comma-separated stores (or repartition topics) of the savepoint to "
        "leave out on purpose: without it, savepoint state the topology has no place for "
        "stops the start.")
    repartition_purge_interval_ms: int = Field(
        30_000, ge=100, description="How often records of repartition topics that the group "
        "has committed are deleted (the topics have no time-based retention).")
    schema_dir: Path | None = Field(
        None, description="Directory of the .avsc files topologies name (default ./schemas).")
    schema_registry_url: str | None = Field(
        None, description="Schema registry for codecs.registry_avro (Confluent wire format): "
        "http(s)://host:port, or mock://name for confluent-kafka's in-memory registry.")
    schema_registry_basic_auth: pydantic.SecretStr | None = Field(
        None, description="user:password for the schema registry (HTTP basic auth; secret, "
        "prefer schema_registry_basic_auth_file).")
    schema_registry_basic_auth_file: Path | None = Field(
        None, description="File holding user:password for the schema registry.")
    schema_registry_ssl_ca_location: Path | None = Field(
        None, description="CA certificate(s) (PEM) the registry's certificate is checked "
        "against (https).")
    schema_registry_ssl_certificate_location: Path | None = Field(
        None, description="Client certificate (PEM) for mutual TLS to the registry.")
    schema_registry_ssl_key_location: Path | None = Field(
        None, description="Client private key (PEM) for mutual TLS to the registry.")
    schema_registry_subject_strategy: Literal["topic", "record", "topic_record"] = Field(
        "topic", description="Subject naming: topic ({topic}-key/-value), record (the record's "
        "full name) or topic_record ({topic}-{full name}).")
    schema_registry_auto_register: bool = Field(
        True, description="Register output schemas at start; false: they must already be "
        "registered (the app stops at start naming the subject otherwise).")
    schema_registry_config: dict[str, str] = Field(
        default_factory=dict, description="Extra schema registry client settings, e.g. TLS "
        "(JSON in env).")
    http_port: int | None = Field(
        None, ge=0, le=65535, description="Serve /healthz, /readyz, /metrics, /topology, "
        "/status and the dashboard on this port; unset: no HTTP server; 0: a free port, "
        "logged as http.listening.")
    http_host: str = Field("127.0.0.1", min_length=1, description="Address the HTTP server "
                           "binds (0.0.0.0 in a container, so probes and scrapes reach it).")
    http_advertised_url: str | None = Field(
        None, description="The URL other instances reach this one's HTTP server at (queryable "
        "state proxies and redirects there); default http://{http_host}:{port}, with a wildcard "
        "host replaced by this machine's hostname.")
    # -- the HTTP surface's security and limits (docs/security.md, "HTTP surface") ----------
    http_auth_token: pydantic.SecretStr | None = Field(
        None, description="Bearer token required on /state, /status and /topology (secret; "
        "prefer http_auth_token_file); at least 16 characters of A-Z a-z 0-9 -._~+/. Every "
        "instance of the application needs the same one: they send it when they proxy.")
    http_auth_token_file: Path | None = Field(
        None, description="File holding the bearer token (e.g. a mounted Kubernetes secret).")
    http_auth_probes: bool = Field(
        False, description="Require the token on /healthz and /readyz too (probes often "
        "cannot send one).")
    http_auth_metrics: bool = Field(
        False, description="Require the token on /metrics too (scrapers need it configured).")
    http_tls_cert_file: Path | None = Field(
        None, description="Serve HTTPS with this PEM certificate (chain); needs "
        "http_tls_key_file. The default advertised URL becomes https://.")
    http_tls_key_file: Path | None = Field(
        None, description="PEM private key of http_tls_cert_file.")
    http_tls_key_password: pydantic.SecretStr | None = Field(
        None, description="Password of http_tls_key_file, when it is encrypted (secret).")
    http_tls_ca_file: Path | None = Field(
        None, description="PEM CA bundle that verifies other instances' HTTPS certificates "
        "when proxying /state (default: the system's trust store).")
    http_state_enabled: bool = Field(
        True, description="Serve queryable state (/state) and publish this instance to the "
        "{app}-instances registry; false: /state answers 404 and no registry clients run.")
    http_registry_signing_key: pydantic.SecretStr | None = Field(
        None, description="Shared secret (16+ characters) that signs {app}-instances entries "
        "(HMAC-SHA256); when set, unsigned or badly signed entries are ignored (and counted "
        "in registry_records_rejected_total). Every instance needs the same one.")
    http_state_max_scan: int = Field(
        100_000, ge=100, le=100_000_000, description="Most store entries one /state request "
        "reads (window stores filter what they read); a listing or lookup that reaches it "
        "answers what it found with scan_limited and resume_from.")
    http_state_max_rows: int = Field(
        1000, ge=1, le=100_000, description="Largest limit a /state request may ask for.")
    http_state_max_concurrent: int = Field(
        8, ge=1, le=1024, description="/state requests served at once by this instance; more "
        "answer 503 busy with Retry-After.")
    http_state_max_fanout: int = Field(
        32, ge=1, le=1024, description="Most other instances one scope=all listing asks; the "
        "rest are reported in errors and the answer is not complete.")
    http_proxy_max_response_bytes: int = Field(
        8 * 1024 * 1024, ge=65_536, le=1024**3, description="Largest answer read from another "
        "instance (proxied lookups, scope=all listings); a larger one is an error.")
    http_proxy_timeout_ms: int = Field(
        5000, ge=100, le=120_000, description="Timeout of a request to another instance.")
    health_stuck_after_ms: int = Field(
        60_000, ge=1000, le=3_600_000, description="/healthz answers 503 once the loop has not "
        "polled Kafka for this long (at least 3 poll timeouts).")
    internal_replication_factor: int | None = Field(
        None, ge=1, le=32, description="Replicas of every internal topic the application "
        "creates (changelogs, repartition, dead-letter, late, instances). Unset: the broker's "
        "default.replication.factor and min.insync.replicas. 3 or more also sets "
        "min.insync.replicas=2 on them; more than the cluster's brokers stops the start.")
    max_record_bytes: int | None = Field(
        None, ge=1024, le=1_000_000_000, description="Largest record (key + value + headers "
        "+ framing) the instance writes; a larger output, dead letter or state value is bad "
        "input for the record that caused it. Unset: the smallest max.message.bytes of the "
        "topics it writes (checked at start: a larger value stops the start).")
    min_timestamp_ms: int = Field(
        0, ge=0, description="Event timestamps before this (epoch ms; default 1970-01-01) are "
        "bad input: dead-lettered per the source's policy, never moving the watermark.")
    max_future_skew_ms: int = Field(
        86_400_000, ge=0, description="Event timestamps more than this ahead of the wall clock "
        "are bad input: dead-lettered per the source's policy, never moving the watermark.")
    control_signing_key: pydantic.SecretStr | None = Field(
        None, description="Shared secret that signs watermark control records (HMAC-SHA256) on "
        "repartition topics; every instance of the application must have the same one. "
        "Unset: a key derived from the application id (rejects foreign and forwarded control "
        "records, not a producer that can write the internal topics: see docs/security.md).")
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

    @field_validator("instance_id")
    @classmethod
    def _instance_id(cls, v: str | None) -> str | None:
        # It becomes the transactional.id and group.instance.id suffix: the names' rules.
        problem = None if v is None else name_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://", "mock://")):
            raise ValueError("must start with http://, https:// or mock://")
        if v is not None and "@" in v.split("://", 1)[1].split("/", 1)[0]:
            # Credentials in a URL end up in logs and error messages: refused, never echoed.
            raise ValueError("must not embed credentials (user:password@); set "
                             "schema_registry_basic_auth_file instead")
        return v

    @field_validator("http_advertised_url")
    @classmethod
    def _advertised_url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^/\s]+/?", v):
            raise ValueError("must be http(s)://host:port (no path)")
        return v

    @field_validator("http_auth_token")
    @classmethod
    def _http_token(cls, v: pydantic.SecretStr | None) -> pydantic.SecretStr | None:
        # RFC 6750's b64token, long enough not to be guessed; the value is never echoed.
        if v is not None and not re.fullmatch(r"[A-Za-z0-9\-._~+/]{16,4096}=*",
                                              v.get_secret_value()):
            raise ValueError("must be at least 16 characters of A-Z a-z 0-9 - . _ ~ + /")
        return v

    @field_validator("http_auth_token_file", "http_tls_cert_file", "http_tls_key_file",
                     "http_tls_ca_file")
    @classmethod
    def _http_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"{v} is not a readable file")
        return v

    @field_validator("http_registry_signing_key")
    @classmethod
    def _signing_key(cls, v: pydantic.SecretStr | None) -> pydantic.SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return v

    @model_validator(mode="after")
    def _http_surface(self) -> Settings:
        if self.http_auth_token is not None and self.http_auth_token_file is not None:
            raise ValueError("http_auth_token and http_auth_token_file are both set: give one")
        if self.http_auth_token_file is not None:
            token = self.secret("http_auth_token")
            try:
                type(self)._http_token(pydantic.SecretStr(token or ""))
            except ValueError as exc:
                raise ValueError(f"http_auth_token_file: the token {exc}") from None
        if (self.http_tls_cert_file is None) != (self.http_tls_key_file is None):
            raise ValueError("http_tls_cert_file and http_tls_key_file go together")
        if self.http_tls_key_password is not None and self.http_tls_key_file is None:
            raise ValueError("http_tls_key_password is set without http_tls_key_file")
        if self.http_tls_cert_file is not None and self.http_advertised_url is not None \
                and not self.http_advertised_url.startswith("https://"):
            raise ValueError("http_advertised_url must be https:// when http_tls_cert_file "
                             "is set")
        if self.workers > 1 and self.http_port and self.http_port + self.workers > 65535:
            raise ValueError(f"http_port {self.http_port} leaves no ports for {self.workers} "
                             "workers (they listen on http_port+1 to http_port+workers)")
        if self.num_standby_replicas and (self.http_port is None or not self.http_state_enabled):
            raise ValueError("num_standby_replicas needs the {app}-instances registry, which "
                             "only an instance serving HTTP joins: set http_port (0: a free "
                             "port) and keep http_state_enabled")
        if self.http_state_max_rows > self.http_state_max_scan:
            raise ValueError("http_state_max_rows must not exceed http_state_max_scan")
        return self

    @field_validator("schema_registry_basic_auth")
    @classmethod
    def _basic_auth(cls, v: pydantic.SecretStr | None) -> pydantic.SecretStr | None:
        if v is not None and ":" not in v.get_secret_value():
            raise ValueError("must be user:password")
        return v

    @field_validator("schema_registry_config")
    @classmethod
    def _registry_config(cls, v: dict[str, str]) -> dict[str, str]:
        if "basic.auth.user.info" in v:
            raise ValueError("must not carry basic.auth.user.info (a secret in plain JSON); "
                             "set schema_registry_basic_auth_file instead")
        return v

    @property
    def savepoint_drops(self) -> list[str]:
        return [n.strip() for n in (self.savepoint_drop or "").split(",") if n.strip()]

    def registry(self) -> RegistrySettings | None:
        """The schema registry codecs bind to, when one is configured."""
        if self.schema_registry_url is None:
            return None
        tls = {key: str(path) for key, path in (
            ("ssl.ca.location", self.schema_registry_ssl_ca_location),
            ("ssl.certificate.location", self.schema_registry_ssl_certificate_location),
            ("ssl.key.location", self.schema_registry_ssl_key_location)) if path is not None}
        return RegistrySettings(
            self.schema_registry_url, self.secret("schema_registry_basic_auth"),
            self.schema_registry_subject_strategy, self.schema_registry_auto_register,
            {**self.schema_registry_config, **tls})

    @field_validator("until")
    @classmethod
    def _until(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if v.strip().lower() == "end":
            return "end"
        try:
            parse_instant(v)
        except ValueError as exc:
            raise ValueError(f"must be 'end', epoch milliseconds or an ISO-8601 datetime: {exc}"
                             ) from None
        return v.strip()

    @field_validator("from_datetime")
    @classmethod
    def _from_datetime(cls, v: str | None) -> str | None:
        if v is not None:
            parse_instant(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.savepoint_drop and self.from_savepoint is None:
            raise ValueError("savepoint_drop is set without from_savepoint")
        if self.transaction_timeout_ms <= self.commit_interval_ms:
            raise ValueError(
                "transaction_timeout_ms must be larger than commit_interval_ms, or every "
                "transaction would time out before its checkpoint"
            )
        return self


def parse_instant(text: str) -> int:
    """Epoch milliseconds from ``text``: an integer (epoch ms) or an ISO-8601 date or datetime;
    without a UTC offset it is taken as UTC (the same instant on every machine)."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither epoch milliseconds nor an ISO-8601 datetime "
                         "(e.g. 2024-03-01T12:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


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
