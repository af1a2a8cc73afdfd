"""How every Kafka client of the engine connects: security protocol, SASL, TLS, secrets.

Production clusters require TLS and SASL (SCRAM, PLAIN, OAUTHBEARER), and every client the
engine creates (the application's consumer and producer, the restore consumer, the topic admin,
bounded runs, reset, dlq, savepoints, the instance registry, bench and demo) must connect the
same way, or a secured cluster refuses the first one that does not. So the connection is one
set of settings (:class:`ConnectionSettings`, part of the instance settings) turned into
librdkafka keys by one function, :func:`kafka_connection`, that every client config starts
from.

Secrets are ``SecretStr`` (masked in reprs, logs, ``/status`` and error messages) and can come
from files (``*_file``, as Kubernetes mounts secrets), so they never need to be on a command
line where ``ps`` shows them. The escape hatch ``kafka_config`` (JSON) adds any other
librdkafka key to every client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]

# Secret settings with a *_file twin: the value, or the file's content (one trailing newline
# dropped, as `echo` and editors leave one).
SECRETS = ("sasl_password", "ssl_key_password", "sasl_oauthbearer_client_secret",
           "schema_registry_basic_auth")

# librdkafka keys the connection settings own: setting them through kafka_config or the
# consumer/producer configs too would make two places disagree about how to connect.
CONNECTION_KEYS = frozenset({
    "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username",
    "sasl.password", "ssl.ca.location", "ssl.certificate.location", "ssl.key.location",
    "ssl.key.password", "ssl.endpoint.identification.algorithm", "sasl.oauthbearer.method",
    "sasl.oauthbearer.client.id", "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.token.endpoint.url", "sasl.oauthbearer.scope"})


class ConnectionSettings(BaseSettings):
    """The Kafka connection, shared by every client (a mixin of the instance settings)."""

    security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, for every Kafka "
        "client the engine creates.")
    sasl_mechanism: SaslMechanism | None = Field(
        None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (with a SASL "
        "security protocol).")
    sasl_username: str | None = Field(None, description="SASL user (PLAIN, SCRAM).")
    sasl_password: pydantic.SecretStr | None = Field(
        None, description="SASL password (secret; prefer sasl_password_file).")
    sasl_password_file: Path | None = Field(
        None, description="File holding the SASL password (e.g. a mounted Kubernetes secret).")
    sasl_oauthbearer_method: Literal["default", "oidc"] | None = Field(
        None, description="OAUTHBEARER token source: oidc (client credentials against "
        "sasl_oauthbearer_token_endpoint_url) or default (librdkafka's unsecured JWT, for "
        "development only).")
    sasl_oauthbearer_client_id: str | None = Field(None, description="OIDC client id.")
    sasl_oauthbearer_client_secret: pydantic.SecretStr | None = Field(
        None, description="OIDC client secret (secret).")
    sasl_oauthbearer_client_secret_file: Path | None = Field(
        None, description="File holding the OIDC client secret.")
    sasl_oauthbearer_token_endpoint_url: str | None = Field(
        None, description="OIDC token endpoint (https://...).")
    sasl_oauthbearer_scope: str | None = Field(None, description="OIDC scope.")
    ssl_ca_location: Path | None = Field(
        None, description="CA certificate(s) (PEM) the brokers' certificates are checked "
        "against; unset: the system's.")
    ssl_certificate_location: Path | None = Field(
        None, description="Client certificate (PEM) for mutual TLS.")
    ssl_key_location: Path | None = Field(
        None, description="Client private key (PEM) for mutual TLS.")
    ssl_key_password: pydantic.SecretStr | None = Field(
        None, description="Password of the client private key (secret).")
    ssl_key_password_file: Path | None = Field(
        None, description="File holding the client private key's password.")
    ssl_endpoint_identification: bool = Field(
        True, description="Check that a broker's certificate names the host connected to "
        "(turn off only for test certificates).")
    kafka_config: dict[str, str] = Field(
        default_factory=dict, description="Extra librdkafka settings for every Kafka client "
        "(JSON in env), e.g. socket or timeout tuning.")

    @model_validator(mode="after")
    def _connection_consistent(self) -> ConnectionSettings:
        for name in SECRETS:
            if getattr(self, name, None) is not None and getattr(self, f"{name}_file",
                                                                 None) is not None:
                raise ValueError(f"{name} and {name}_file are both set: give one")
            path = getattr(self, f"{name}_file", None)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}_file: {path} is not a readable file")
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError(f"sasl_mechanism is set but security_protocol is "
                             f"{self.security_protocol} (use SASL_SSL or SASL_PLAINTEXT)")
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and (
                self.sasl_username is None or self.secret("sasl_password") is None):
            raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs sasl_username and "
                             "sasl_password (or sasl_password_file)")
        if self.sasl_oauthbearer_method == "oidc" and (
                not self.sasl_oauthbearer_client_id
                or self.secret("sasl_oauthbearer_client_secret") is None
                or not self.sasl_oauthbearer_token_endpoint_url):
            raise ValueError("sasl_oauthbearer_method oidc needs sasl_oauthbearer_client_id, "
                             "sasl_oauthbearer_client_secret and "
                             "sasl_oauthbearer_token_endpoint_url")
        for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: {path} is not a readable file")
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise ValueError("ssl_certificate_location and ssl_key_location go together "
                             "(mutual TLS needs both)")
        owned = sorted(CONNECTION_KEYS & set(self.kafka_config))
        if owned:
            raise ValueError(f"kafka_config sets {', '.join(owned)}: use the connection "
                             "settings (security_protocol, sasl_*, ssl_*) instead")
        return self

    def secret(self, name: str) -> str | None:
        """The secret ``name`` from its setting or its ``*_file`` (read when asked, so a
        rotated file is picked up by the next client)."""
        value = getattr(self, name, None)
        if value is not None:
            return str(value.get_secret_value())
        path = getattr(self, f"{name}_file", None)
        if path is None:
            return None
        text = Path(path).read_text(encoding="utf-8")
        return text[:-1] if text.endswith("\n") else text


def kafka_connection(settings: ConnectionSettings, bootstrap: str) -> dict[str, Any]:
    """The librdkafka keys every client starts from: bootstrap servers, security, extras."""
    s = settings
    conf: dict[str, Any] = {**s.kafka_config, "bootstrap.servers": bootstrap,
                            "security.protocol": s.security_protocol.lower()}
    if s.sasl_mechanism is not None:
        conf["sasl.mechanism"] = s.sasl_mechanism
        if s.sasl_username is not None:
            conf["sasl.username"] = s.sasl_username
        password = s.secret("sasl_password")
        if password is not None:
            conf["sasl.password"] = password
        if s.sasl_oauthbearer_method is not None:
            conf["sasl.oauthbearer.method"] = s.sasl_oauthbearer_method
        for key, value in (("client.id", s.sasl_oauthbearer_client_id),
                           ("client.secret", s.secret("sasl_oauthbearer_client_secret")),
                           ("token.endpoint.url", s.sasl_oauthbearer_token_endpoint_url),
                           ("scope", s.sasl_oauthbearer_scope)):
            if value is not None:
                conf[f"sasl.oauthbearer.{key}"] = value
    if s.security_protocol in ("SSL", "SASL_SSL"):
        for key, path in (("ssl.ca.location", s.ssl_ca_location),
                          ("ssl.certificate.location", s.ssl_certificate_location),
                          ("ssl.key.location", s.ssl_key_location)):
            if path is not None:
                conf[key] = str(path)
        key_password = s.secret("ssl_key_password")
        if key_password is not None:
            conf["ssl.key.password"] = key_password
        conf["ssl.endpoint.identification.algorithm"] = (
            "https" if s.ssl_endpoint_identification else "none")
    return conf


def masked(conf: dict[str, Any]) -> dict[str, Any]:
    """``conf`` safe to log or show: every secret value replaced."""
    secret_keys = ("password", "secret", "sasl.jaas", "basic.auth.user.info", "token")
    return {k: ("**********" if any(s in k for s in secret_keys) else v)
            for k, v in conf.items() if k != "logger"}
