"""The secured local broker's material and config, without a broker: certificates (SANs, CA
signature, key usage, validity), the keystore, file permissions, password handling, the
server.properties entries, the SCRAM format arguments and the client settings."""

from __future__ import annotations

import ipaddress
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from streamproc.connection import ConnectionSettings, kafka_connection
from streamproc.kafka import broker_security as sec
from streamproc.kafka.broker_provision import BrokerError, _server_properties, _write_argfile

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
PORTS = {"sasl": 9101, "mtls": 9102, "internal": 9103, "controller": 9104}
EXPECTED_FILES = {
    "ca.pem", "broker.crt.pem", "broker.p12", "broker-keystore.password",
    "admin.crt.pem", "admin.key.pem", "admin.password",
    "app.crt.pem", "app.key.pem", "app.password",
}
PRIVATE_FILES = {"broker.p12", "broker-keystore.password", "admin.key.pem", "admin.password",
                 "app.key.pem", "app.password"}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    sec.ensure_material(tmp_path, formatted=False, now=NOW)
    return tmp_path


def cert(data_dir: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((data_dir / "security" / name).read_bytes())


def ext(certificate: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:
    return certificate.extensions.get_extension_for_class(kind)


def cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


# --------------------------------------------------------------------------- certificates


def test_ca_is_self_signed_and_may_only_sign_leaves(data_dir: Path) -> None:
    ca = cert(data_dir, "ca.pem")
    ca.verify_directly_issued_by(ca)
    assert cn(ca.subject) == "streamproc local CA"
    constraints = ext(ca, x509.BasicConstraints)
    assert constraints.critical is True
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = ext(ca, x509.KeyUsage)
    assert usage.critical is True
    assert (usage.value.key_cert_sign, usage.value.crl_sign, usage.value.digital_signature) == (
        True, True, False)


def test_broker_certificate_names_loopback_and_is_signed_by_the_ca(data_dir: Path) -> None:
    ca, broker = cert(data_dir, "ca.pem"), cert(data_dir, "broker.crt.pem")
    broker.verify_directly_issued_by(ca)
    assert cn(broker.subject) == "broker"
    san = ext(broker, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    # Server and client: the broker also presents it to its own INTERNAL/CONTROLLER listeners.
    assert list(ext(broker, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = ext(broker, x509.KeyUsage)
    assert usage.critical is True
    assert (usage.value.digital_signature, usage.value.key_cert_sign,
            usage.value.key_encipherment) == (True, False, False)
    assert ext(broker, x509.BasicConstraints).value.ca is False
    assert ext(broker, x509.AuthorityKeyIdentifier).value.key_identifier == ext(
        ca, x509.SubjectKeyIdentifier).value.digest


@pytest.mark.parametrize("user", ["admin", "app"])
def test_client_certificates_carry_the_user_as_cn_for_client_auth_only(
        data_dir: Path, user: str) -> None:
    ca, client = cert(data_dir, "ca.pem"), cert(data_dir, f"{user}.crt.pem")
    client.verify_directly_issued_by(ca)
    # The whole subject is CN=<user>: the broker's principal mapping rule turns it into User:<user>.
    assert client.subject.rfc4514_string() == f"CN={user}"
    assert list(ext(client, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        ext(client, x509.SubjectAlternativeName)
    key = serialization.load_pem_private_key(
        (data_dir / "security" / f"{user}.key.pem").read_bytes(), password=None)
    assert key.public_key() == client.public_key()


@pytest.mark.parametrize("name", ["ca.pem", "broker.crt.pem", "admin.crt.pem", "app.crt.pem"])
def test_validity_is_one_year_from_five_minutes_ago(data_dir: Path, name: str) -> None:
    c = cert(data_dir, name)
    assert c.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert c.not_valid_after_utc == NOW + timedelta(days=365)


def test_keystore_holds_the_broker_key_and_chain_under_its_password(data_dir: Path) -> None:
    security = data_dir / "security"
    password = (security / "broker-keystore.password").read_text().strip()
    key, leaf, chain = pkcs12.load_key_and_certificates(
        (security / "broker.p12").read_bytes(), password.encode())
    assert leaf == cert(data_dir, "broker.crt.pem")
    assert chain == [cert(data_dir, "ca.pem")]
    assert key is not None
    assert key.public_key() == leaf.public_key()
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates((security / "broker.p12").read_bytes(), b"wrong")


def test_files_are_exactly_these_and_secrets_are_owner_only(data_dir: Path) -> None:
    security = data_dir / "security"
    # No CA key among them: nobody can issue further certificates from the data dir.
    assert {p.name for p in security.iterdir()} == EXPECTED_FILES
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in security.iterdir()}
    assert {name: modes[name] for name in PRIVATE_FILES} == dict.fromkeys(PRIVATE_FILES, 0o600)
    assert stat.S_IMODE(security.stat().st_mode) == 0o700


# --------------------------------------------------------------------------- reuse & renewal


def test_material_is_reused_while_valid(data_dir: Path) -> None:
    security = data_dir / "security"
    before = {p.name: p.read_bytes() for p in security.iterdir()}
    sec.ensure_material(data_dir, formatted=True, now=NOW + timedelta(days=300))
    assert {p.name: p.read_bytes() for p in security.iterdir()} == before


def test_tls_is_renewed_near_expiry_and_passwords_are_kept(data_dir: Path) -> None:
    security = data_dir / "security"
    passwords = {u: (security / f"{u}.password").read_text() for u in ("admin", "app")}
    old_ca = cert(data_dir, "ca.pem")
    later = NOW + timedelta(days=340)  # 25 days left: under the 30-day margin
    sec.ensure_material(data_dir, formatted=True, now=later)
    new_ca = cert(data_dir, "ca.pem")
    assert new_ca.public_key() != old_ca.public_key()
    assert new_ca.not_valid_after_utc == later + timedelta(days=365)
    cert(data_dir, "broker.crt.pem").verify_directly_issued_by(new_ca)
    assert {u: (security / f"{u}.password").read_text() for u in ("admin", "app")} == passwords


def test_a_missing_certificate_regenerates_the_set(data_dir: Path) -> None:
    (data_dir / "security" / "app.crt.pem").unlink()
    sec.ensure_material(data_dir, formatted=True, now=NOW)
    cert(data_dir, "app.crt.pem").verify_directly_issued_by(cert(data_dir, "ca.pem"))
    cert(data_dir, "admin.crt.pem").verify_directly_issued_by(cert(data_dir, "ca.pem"))


def test_passwords_are_random_and_distinct(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for d in (first, second):
        d.mkdir()
        sec.ensure_material(d, formatted=False, now=NOW)
    values = [(d / "security" / f"{u}.password").read_text() for d in (first, second)
              for u in ("admin", "app")]
    assert len(set(values)) == 4
    assert all(len(v.strip()) == 32 and v.endswith("\n") for v in values)


def test_a_formatted_dir_without_passwords_is_refused(tmp_path: Path) -> None:
    # A plaintext broker's storage: SCRAM users cannot be added by formatting again.
    with pytest.raises(BrokerError, match="formatted without SCRAM users admin, app"):
        sec.ensure_material(tmp_path, formatted=True, now=NOW)


def test_plaintext_start_of_a_secured_dir_is_refused(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="holds a secured broker"):
        sec.prepare(data_dir, "plaintext", formatted=True)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    sec.prepare(fresh, "plaintext", formatted=False)  # plaintext dirs are left alone
    assert list(fresh.iterdir()) == []
    with pytest.raises(ValueError, match="security must be 'plaintext' or 'sasl_ssl', not 'ssl'"):
        sec.prepare(fresh, "ssl", formatted=False)


def test_nothing_logged_holds_a_secret(tmp_path: Path, restore_logging: None) -> None:
    # An earlier test may have configured a level above info (a CLI command it ran): the
    # filtering logger would drop the event before capture_logs sees it.
    structlog.reset_defaults()
    with structlog.testing.capture_logs() as logged:
        sec.ensure_material(tmp_path, formatted=False, now=NOW)
    security = tmp_path / "security"
    secrets = [p.read_text().strip() for p in security.glob("*.password")]
    assert [e["event"] for e in logged] == ["kafka.broker.tls_generated"]
    text = json.dumps(logged, default=str)
    assert [s for s in secrets if s in text] == []


# --------------------------------------------------------------------------- broker config


def test_server_settings_secure_every_listener(data_dir: Path) -> None:
    secured = sec.secured_broker(data_dir, PORTS)
    settings = dict(sec.server_settings(secured))
    assert settings["listeners"] == ("SASL_SSL://127.0.0.1:9101,MTLS://127.0.0.1:9102,"
                                     "INTERNAL://127.0.0.1:9103,CONTROLLER://127.0.0.1:9104")
    assert settings["advertised.listeners"] == (
        "SASL_SSL://127.0.0.1:9101,MTLS://127.0.0.1:9102,INTERNAL://127.0.0.1:9103")
    assert settings["listener.security.protocol.map"] == (
        "SASL_SSL:SASL_SSL,MTLS:SSL,INTERNAL:SSL,CONTROLLER:SSL")
    assert settings["inter.broker.listener.name"] == "INTERNAL"
    assert settings["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert [settings[f"listener.name.{n}.ssl.client.auth"]
            for n in ("mtls", "internal", "controller")] == ["required"] * 3
    assert settings["authorizer.class.name"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer")
    assert settings["allow.everyone.if.no.acl.found"] == "false"
    assert settings["super.users"] == "User:admin;User:broker"
    assert settings["ssl.principal.mapping.rules"] == "RULE:^CN=([^,]+)$/$1/,DEFAULT"
    assert settings["ssl.keystore.password"] == (
        data_dir / "security" / "broker-keystore.password").read_text().strip()


def test_overrides_replace_plaintext_entries_in_place(data_dir: Path) -> None:
    plain = _server_properties(data_dir, 9101, 9104)
    secured = _server_properties(data_dir, 9101, 9104,
                                 sec.server_settings(sec.secured_broker(data_dir, PORTS)))
    plain_keys = [line.split("=", 1)[0] for line in plain.splitlines()[1:]]
    secured_keys = [line.split("=", 1)[0] for line in secured.splitlines()[1:]]
    assert secured_keys[:len(plain_keys)] == plain_keys  # same order, each key once
    assert len(secured_keys) == len(set(secured_keys))
    assert "PLAINTEXT" not in secured
    assert "listeners=PLAINTEXT://127.0.0.1:9101,CONTROLLER://127.0.0.1:9104\n" in plain


def test_scram_users_reach_the_storage_tool_through_a_private_argfile(
        data_dir: Path, tmp_path: Path) -> None:
    secured = sec.secured_broker(data_dir, PORTS)
    args = sec.scram_format_args(secured)
    passwords = [secured.password_file(u).read_text().strip() for u in ("admin", "app")]
    assert args == ["--add-scram", f"SCRAM-SHA-512=[name=admin,password={passwords[0]}]",
                    "--add-scram", f"SCRAM-SHA-512=[name=app,password={passwords[1]}]"]
    argfile = tmp_path / "args"
    _write_argfile(argfile, ["-cp", "/a b/*", 'say "hi"\\', *args])
    assert stat.S_IMODE(argfile.stat().st_mode) == 0o600
    assert argfile.read_text().splitlines()[:3] == ['"-cp"', '"/a b/*"', '"say \\"hi\\"\\\\"']


def test_broker_json_fields_round_trip(data_dir: Path) -> None:
    extra = {"mtls": 9102, "internal": 9103}
    raw = {"port": 9101, "controller_port": 9104, **sec.state_fields(extra)}
    assert raw["security"] == "sasl_ssl"
    assert sec.recorded_security(data_dir, raw) == sec.secured_broker(data_dir, PORTS)
    assert sec.recorded_security(data_dir, {"port": 9101}) is None
    with pytest.raises(ValueError, match="no internal_port"):
        sec.recorded_security(data_dir, {**raw, "internal_port": None})


# --------------------------------------------------------------------------- client side


def test_client_settings_use_the_connection_setting_names(data_dir: Path) -> None:
    secured = sec.secured_broker(data_dir, PORTS)
    security = data_dir / "security"
    assert secured.client_settings("app", "sasl") == {
        "brokers": "127.0.0.1:9101", "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "app",
        "sasl_password_file": str(security / "app.password"),
        "ssl_ca_location": str(security / "ca.pem"), "ssl_endpoint_identification": "true"}
    assert secured.client_settings("admin", "mtls") == {
        "brokers": "127.0.0.1:9102", "security_protocol": "SSL",
        "ssl_ca_location": str(security / "ca.pem"), "ssl_endpoint_identification": "true",
        "ssl_certificate_location": str(security / "admin.crt.pem"),
        "ssl_key_location": str(security / "admin.key.pem")}
    with pytest.raises(ValueError, match="unknown user 'root'"):
        secured.client_settings("root")


@pytest.mark.parametrize("mode", ["sasl", "mtls"])
def test_client_settings_give_the_same_librdkafka_config_as_client_config(
        data_dir: Path, mode: sec.ClientMode) -> None:
    secured = sec.secured_broker(data_dir, PORTS)
    settings = secured.client_settings("app", mode)
    bootstrap = settings.pop("brokers")
    engine = kafka_connection(ConnectionSettings(**settings), bootstrap)
    assert engine == secured.client_config("app", mode)


def test_describe_names_files_never_secrets(data_dir: Path) -> None:
    secured = sec.secured_broker(data_dir, PORTS)
    text = sec.describe(secured)
    assert str(secured.password_file("app")) in text
    assert str(secured.key_file("admin")) in text
    secrets = [p.read_text().strip() for p in (data_dir / "security").glob("*.password")]
    assert [s for s in secrets if s in text] == []


def test_an_interrupted_generation_is_redone_at_the_next_start(
        data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    leaf = sec._leaf

    def fail_for_app(*args: object, **kwargs: object) -> object:
        if args[2] == "app":
            raise KeyboardInterrupt
        return leaf(*args, **kwargs)

    monkeypatch.setattr(sec, "_leaf", fail_for_app)
    with pytest.raises(KeyboardInterrupt):
        sec.generate_tls(data_dir / "security", now=NOW)
    # The broker's files are new, the CA that signed them was never written: not a valid set.
    assert not (data_dir / "security" / "ca.pem").exists()
    monkeypatch.setattr(sec, "_leaf", leaf)
    sec.ensure_material(data_dir, formatted=True, now=NOW)
    ca = cert(data_dir, "ca.pem")
    for name in ("broker.crt.pem", "admin.crt.pem", "app.crt.pem"):
        cert(data_dir, name).verify_directly_issued_by(ca)


def test_acl_names_are_confluent_kafka_members_or_kafkas_names() -> None:
    from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType

    assert sec._member(ResourceType, "topic") is ResourceType.TOPIC
    assert sec._member(ResourceType, "CLUSTER") is ResourceType.BROKER
    assert sec._member(ResourcePatternType, "prefixed") is ResourcePatternType.PREFIXED
    assert sec._member(AclOperation, AclOperation.READ) is AclOperation.READ
    with pytest.raises(ValueError, match="'WRTIE' is not one of"):
        sec._member(AclOperation, "WRTIE")
