"""The Kafka connection settings (streamproc/connection.py): one config for every client,
secrets from settings or files and never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamproc.config import load_settings
from streamproc.connection import kafka_connection, masked
from streamproc.errors import ConfigError
from streamproc.kafka.clients import consumer_config, producer_config, restore_consumer_config


def test_plaintext_by_default() -> None:
    assert kafka_connection(load_settings(), "h:1") == {
        "bootstrap.servers": "h:1", "security.protocol": "plaintext"}


def test_sasl_ssl_with_scram_and_a_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    s = load_settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                      sasl_username="app", sasl_password_file=secret, ssl_ca_location=ca,
                      kafka_config={"socket.timeout.ms": "5000"})
    assert kafka_connection(s, "h:1") == {
        "socket.timeout.ms": "5000", "bootstrap.servers": "h:1", "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "app", "sasl.password": "s3cret",
        "ssl.ca.location": str(ca), "ssl.endpoint.identification.algorithm": "https"}
    # Every client the engine builds starts from it.
    for conf in (consumer_config(s, "h:1", "g", "i"), producer_config(s, "h:1", "t", "c"),
                 restore_consumer_config(s, "h:1", "g")):
        assert conf["sasl.password"] == "s3cret" and conf["security.protocol"] == "sasl_ssl"
    # A rotated file is read by the next client.
    secret.write_text("rotated")
    assert kafka_connection(s, "h:1")["sasl.password"] == "rotated"


def test_mutual_tls(tmp_path: Path) -> None:
    files = {}
    for name in ("ca", "cert", "key"):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text("pem")
    s = load_settings(security_protocol="SSL", ssl_ca_location=files["ca"],
                      ssl_certificate_location=files["cert"], ssl_key_location=files["key"],
                      ssl_key_password="kp", ssl_endpoint_identification=False)
    assert kafka_connection(s, "h:1") == {
        "bootstrap.servers": "h:1", "security.protocol": "ssl",
        "ssl.ca.location": str(files["ca"]), "ssl.certificate.location": str(files["cert"]),
        "ssl.key.location": str(files["key"]), "ssl.key.password": "kp",
        "ssl.endpoint.identification.algorithm": "none"}


def test_oauthbearer_oidc() -> None:
    s = load_settings(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
                      sasl_oauthbearer_method="oidc", sasl_oauthbearer_client_id="cid",
                      sasl_oauthbearer_client_secret="cs",
                      sasl_oauthbearer_token_endpoint_url="https://idp/token",
                      sasl_oauthbearer_scope="kafka")
    conf = kafka_connection(s, "h:1")
    assert {k: v for k, v in conf.items() if k.startswith("sasl.")} == {
        "sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.client.id": "cid", "sasl.oauthbearer.client.secret": "cs",
        "sasl.oauthbearer.token.endpoint.url": "https://idp/token",
        "sasl.oauthbearer.scope": "kafka"}


@pytest.mark.parametrize(("given", "message"), [
    ({"security_protocol": "SASL_SSL"}, "security_protocol SASL_SSL needs sasl_mechanism"),
    ({"sasl_mechanism": "PLAIN"}, "sasl_mechanism is set but security_protocol is PLAINTEXT"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
      "sasl_username": "u"}, "needs sasl_username and sasl_password"),
    ({"sasl_password": "a", "sasl_password_file": "/etc/hostname"},
     "sasl_password and sasl_password_file are both set"),
    ({"sasl_password_file": "/no/such/file"}, "sasl_password_file: /no/such/file is not a "
     "readable file"),
    ({"ssl_ca_location": "/no/ca.pem"}, "ssl_ca_location: /no/ca.pem is not a readable file"),
    ({"ssl_certificate_location": "/etc/hostname"}, "ssl_certificate_location and "
     "ssl_key_location go together"),
    ({"kafka_config": {"sasl.password": "x"}}, "kafka_config sets sasl.password: use the "
     "connection settings"),
    ({"security_protocol": "TLS"}, "security_protocol (env STREAMPROC_SECURITY_PROTOCOL"),
])
def test_bad_connection_settings_fail_with_one_message(given: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_settings(**given)


def test_connection_keys_in_client_configs_are_refused() -> None:
    s = load_settings(consumer_config={"security.protocol": "ssl"})
    with pytest.raises(ConfigError, match=r"consumer_config.*security\.protocol: set the "
                       "connection settings"):
        consumer_config(s, "h:1", "g", "i")


def test_secrets_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMPROC_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("STREAMPROC_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMPROC_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("STREAMPROC_SASL_USERNAME", "u")
    s = load_settings()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert kafka_connection(s, "h:1")["sasl.password"] == "hunter2"
    shown = masked({**kafka_connection(s, "h:1"), "ssl.key.password": "k",
                    "sasl.oauthbearer.client.secret": "c", "logger": object()})
    assert "hunter2" not in str(shown) and "logger" not in shown
    assert shown["sasl.password"] == shown["ssl.key.password"] == "**********"
    # A bad value next to a secret: the message names the setting, never the secret.
    monkeypatch.setenv("STREAMPROC_SASL_MECHANISM", "NOPE")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "hunter2" not in str(err.value) and "sasl_mechanism" in str(err.value)


def test_schema_registry_credentials_come_from_a_file_never_the_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must not embed credentials") as err:
        load_settings(schema_registry_url="https://user:hunter2@registry:8081")
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match=r"must not carry basic\.auth\.user\.info"):
        load_settings(schema_registry_config={"basic.auth.user.info": "u:p"})
    auth, ca = tmp_path / "auth", tmp_path / "ca.pem"
    auth.write_text("user:pw\n")
    ca.write_text("pem")
    s = load_settings(schema_registry_url="https://registry:8081",
                      schema_registry_basic_auth_file=auth, schema_registry_ssl_ca_location=ca)
    registry = s.registry()
    assert registry is not None
    assert registry.client_config() == {"url": "https://registry:8081",
                                        "ssl.ca.location": str(ca),
                                        "basic.auth.user.info": "user:pw"}
