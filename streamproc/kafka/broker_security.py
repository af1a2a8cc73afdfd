"""The secured variant of the local broker (``broker.start(security="sasl_ssl")``).

A secured broker has four listeners, all on 127.0.0.1:

* ``SASL_SSL``: TLS plus SCRAM-SHA-512 users (``admin``, the super user, and ``app``, which
  starts without ACLs so tests grant exactly what they need);
* ``MTLS`` (SSL, client certificate required): the principal is the certificate's CN, so the
  ``app`` certificate authenticates as ``User:app``, the same principal as the SCRAM user;
* ``INTERNAL`` (SSL, client certificate required): inter-broker traffic (transaction markers
  go through it even on one node), authenticated by the broker's own certificate
  (``User:broker``). A listener of its own rather than reusing ``MTLS`` so replication never
  depends on how the client listeners are configured, and a future 3-broker cluster can reuse
  it unchanged;
* ``CONTROLLER`` (SSL, client certificate required): KRaft cannot use SCRAM for the controller
  listener (the credentials live in the metadata log the controller serves), and plaintext
  with ``User:ANONYMOUS`` as super user would hand cluster admin to anything on the machine.

KRaft's ``StandardAuthorizer`` is on with ``allow.everyone.if.no.acl.found=false``.

TLS material (a CA, the broker certificate with SANs ``localhost`` and ``127.0.0.1``, client
certificates for every user) is generated with ``cryptography`` into ``data_dir/security`` on
the first secured start and reused until it is close to expiry, so clients keep their files
across restarts. The CA's private key is never written anywhere: nobody (including a process
that can read the data dir) can mint further certificates. Passwords are random, stored in
0600 files and never logged; SCRAM users reach KRaft through ``kafka-storage format
--add-scram``, whose arguments go through a 0600 argument file instead of the command line
(where ``ps`` shows them). This module must not import :mod:`streamproc.kafka.broker`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import structlog

from streamproc.kafka.broker_provision import BrokerError

__all__ = [
    "ADMIN_USER",
    "APP_USER",
    "SCRAM_MECHANISM",
    "USERS",
    "ClientMode",
    "SecuredBroker",
    "Security",
    "describe",
    "ensure_material",
    "grant",
]

log = structlog.get_logger(__name__)

Security = Literal["plaintext", "sasl_ssl"]
ClientMode = Literal["sasl", "mtls"]

ADMIN_USER = "admin"
APP_USER = "app"
USERS = (ADMIN_USER, APP_USER)
# The broker's own certificate CN, i.e. its principal on INTERNAL and CONTROLLER.
BROKER_PRINCIPAL = "broker"
SCRAM_MECHANISM = "SCRAM-SHA-512"
SECURITY_DIR = "security"

# One validity for everything: the CA key is discarded, so the CA is only ever useful for the
# certificates issued with it and can expire with them.
_VALIDITY = timedelta(days=365)
# Renewed at start when less is left, so a long-lived dev broker never serves an expired cert.
_RENEW_BEFORE = timedelta(days=30)
# not_before in the past: a client clock slightly behind ours must not see "not yet valid".
_CLOCK_SKEW = timedelta(minutes=5)
_CA_NAME = "streamproc local CA"
_BROKER_HOSTS = ("localhost",)
_BROKER_IPS = ("127.0.0.1",)

_CA_FILE = "ca.pem"
_BROKER_CERT_FILE = "broker.crt.pem"
_BROKER_KEYSTORE_FILE = "broker.p12"
_KEYSTORE_PASSWORD_FILE = "broker-keystore.password"  # noqa: S105 (a file name)
_GRANT_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class SecuredBroker:
    """Where a secured local broker listens and where its clients' files are."""

    sasl_bootstrap: str
    mtls_bootstrap: str
    internal_bootstrap: str
    controller_bootstrap: str
    ca_pem: Path
    users: tuple[str, ...]
    security_dir: Path

    def password_file(self, user: str) -> Path:
        """The 0600 file holding ``user``'s SCRAM password."""
        return self.security_dir / f"{self._known(user)}.password"

    def certificate_file(self, user: str) -> Path:
        """``user``'s client certificate (PEM), for the mTLS listener."""
        return self.security_dir / f"{self._known(user)}.crt.pem"

    def key_file(self, user: str) -> Path:
        """``user``'s client private key (PEM, unencrypted, 0600)."""
        return self.security_dir / f"{self._known(user)}.key.pem"

    def client_settings(self, user: str = APP_USER, mode: ClientMode = "sasl") -> dict[str, str]:
        """The streamproc settings (``STREAMPROC_<NAME>`` in env) a client of this broker
        needs, as ``user`` over SCRAM (``mode="sasl"``) or a client certificate ("mtls")."""
        common = {"ssl_ca_location": str(self.ca_pem),
                  # The broker certificate names 127.0.0.1 and localhost, so checking the
                  # host stays on, as it must in production.
                  "ssl_endpoint_identification": "true"}
        if mode == "sasl":
            return {"brokers": self.sasl_bootstrap, "security_protocol": "SASL_SSL",
                    "sasl_mechanism": SCRAM_MECHANISM, "sasl_username": self._known(user),
                    "sasl_password_file": str(self.password_file(user)), **common}
        if mode == "mtls":
            return {"brokers": self.mtls_bootstrap, "security_protocol": "SSL", **common,
                    "ssl_certificate_location": str(self.certificate_file(user)),
                    "ssl_key_location": str(self.key_file(user))}
        raise ValueError(f"mode must be 'sasl' or 'mtls', not {mode!r}")

    def client_config(self, user: str = APP_USER, mode: ClientMode = "sasl") -> dict[str, str]:
        """librdkafka settings (password included: never log the result) for a plain
        confluent-kafka client connecting as ``user``."""
        settings = self.client_settings(user, mode)
        conf = {"bootstrap.servers": settings["brokers"],
                "security.protocol": settings["security_protocol"].lower(),
                "ssl.ca.location": settings["ssl_ca_location"],
                "ssl.endpoint.identification.algorithm": "https"}
        if mode == "sasl":
            conf["sasl.mechanism"] = SCRAM_MECHANISM
            conf["sasl.username"] = settings["sasl_username"]
            conf["sasl.password"] = _read_secret(self.password_file(user))
        else:
            conf["ssl.certificate.location"] = settings["ssl_certificate_location"]
            conf["ssl.key.location"] = settings["ssl_key_location"]
        return conf

    def _known(self, user: str) -> str:
        if user not in self.users:
            raise ValueError(f"unknown user {user!r}; the local broker has {', '.join(self.users)}")
        return user


def secured_broker(data_dir: Path, ports: dict[str, int]) -> SecuredBroker:
    """The record of the secured broker of ``data_dir`` listening on ``ports`` (keys sasl,
    mtls, internal, controller)."""
    security_dir = data_dir / SECURITY_DIR
    return SecuredBroker(
        sasl_bootstrap=f"127.0.0.1:{ports['sasl']}",
        mtls_bootstrap=f"127.0.0.1:{ports['mtls']}",
        internal_bootstrap=f"127.0.0.1:{ports['internal']}",
        controller_bootstrap=f"127.0.0.1:{ports['controller']}",
        ca_pem=security_dir / _CA_FILE, users=USERS, security_dir=security_dir)


def state_fields(extra_ports: dict[str, int]) -> dict[str, Any]:
    """What ``broker.json`` records of a secured broker besides the plaintext fields (its
    ``port`` is the SASL_SSL one)."""
    return {"security": "sasl_ssl", **{f"{name}_port": p for name, p in extra_ports.items()}}


def recorded_security(data_dir: Path, raw: dict[str, Any]) -> SecuredBroker | None:
    """The secured broker a ``broker.json`` record describes; None for a plaintext one.
    ValueError when the record says secured but lacks a port."""
    if raw.get("security") != "sasl_ssl":
        return None
    ports: dict[str, int] = {}
    for name, key in (("sasl", "port"), ("controller", "controller_port"),
                      ("mtls", "mtls_port"), ("internal", "internal_port")):
        value = raw.get(key)
        if not isinstance(value, int):
            raise ValueError(f"broker.json of a secured broker has no {key}")
        ports[name] = value
    return secured_broker(data_dir, ports)


def prepare(data_dir: Path, security: Security, *, formatted: bool) -> None:
    """Before a launch: the secured broker's passwords and TLS material, or a refusal to
    start a secured data dir in plaintext (its users and ACLs would silently stop
    applying)."""
    if security not in ("plaintext", "sasl_ssl"):
        raise ValueError(f"security must be 'plaintext' or 'sasl_ssl', not {security!r}")
    if security == "sasl_ssl":
        ensure_material(data_dir, formatted=formatted)
    elif is_secured(data_dir):
        raise BrokerError(
            f"{data_dir} holds a secured broker (SCRAM users and ACLs live in its metadata); "
            "start it with security='sasl_ssl' (--security sasl_ssl), or use another data dir")


def describe(secured: SecuredBroker) -> str:
    """Human-readable lines for ``streamproc kafka status``: addresses and file locations
    (never a secret)."""
    lines = [
        f"sasl_ssl  {secured.sasl_bootstrap}  ({SCRAM_MECHANISM}; users "
        f"{', '.join(secured.users)}; {ADMIN_USER} is super user)",
        f"mtls      {secured.mtls_bootstrap}  (client certificate required; principal = CN)",
        f"ca        {secured.ca_pem}",
    ]
    for user in secured.users:
        lines.append(f"{user:<9} password {secured.password_file(user)}  certificate "
                     f"{secured.certificate_file(user)}  key {secured.key_file(user)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- broker config


def server_settings(secured: SecuredBroker) -> list[tuple[str, str]]:
    """server.properties entries replacing the plaintext listeners (the file holding them
    contains the keystore password: the caller writes it 0600)."""
    d = secured.security_dir
    sasl, mtls = secured.sasl_bootstrap, secured.mtls_bootstrap
    internal, controller = secured.internal_bootstrap, secured.controller_bootstrap
    keystore_password = _read_secret(d / _KEYSTORE_PASSWORD_FILE)
    return [
        ("listeners", f"SASL_SSL://{sasl},MTLS://{mtls},INTERNAL://{internal},"
                      f"CONTROLLER://{controller}"),
        ("advertised.listeners", f"SASL_SSL://{sasl},MTLS://{mtls},INTERNAL://{internal}"),
        ("listener.security.protocol.map",
         "SASL_SSL:SASL_SSL,MTLS:SSL,INTERNAL:SSL,CONTROLLER:SSL"),
        ("inter.broker.listener.name", "INTERNAL"),
        ("listener.name.sasl_ssl.sasl.enabled.mechanisms", SCRAM_MECHANISM),
        # The server side needs a JAAS entry even though SCRAM users come from the metadata
        # log; no credentials in it because no broker logs in over SASL.
        (f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config",
         "org.apache.kafka.common.security.scram.ScramLoginModule required;"),
        ("listener.name.mtls.ssl.client.auth", "required"),
        ("listener.name.internal.ssl.client.auth", "required"),
        ("listener.name.controller.ssl.client.auth", "required"),
        # PKCS12 rather than a PEM keystore: Kafka only accepts a PEM key *file* when it is
        # encrypted, and Java's support for the PKCS#8 encryptions Python writes varies.
        ("ssl.keystore.type", "PKCS12"),
        ("ssl.keystore.location", str(d / _BROKER_KEYSTORE_FILE)),
        ("ssl.keystore.password", keystore_password),
        ("ssl.key.password", keystore_password),
        ("ssl.truststore.type", "PEM"),
        ("ssl.truststore.location", str(secured.ca_pem)),
        # The broker checks its own SANs when it connects to INTERNAL and CONTROLLER.
        ("ssl.endpoint.identification.algorithm", "https"),
        # Certificates are issued with CN only; anything else keeps its full DN (and so
        # matches no ACL).
        ("ssl.principal.mapping.rules", "RULE:^CN=([^,]+)$/$1/,DEFAULT"),
        ("authorizer.class.name", "org.apache.kafka.metadata.authorizer.StandardAuthorizer"),
        ("allow.everyone.if.no.acl.found", "false"),
        ("super.users", f"User:{ADMIN_USER};User:{BROKER_PRINCIPAL}"),
    ]


def scram_format_args(secured: SecuredBroker) -> list[str]:
    """``kafka-storage format`` arguments creating the SCRAM users (secrets: pass them through
    a 0600 argument file, never on a command line)."""
    args: list[str] = []
    for user in secured.users:
        # token_urlsafe passwords hold no ',', '=' or ']' that the SCRAM parser would split on.
        password = _read_secret(secured.password_file(user))
        args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
    return args


# --------------------------------------------------------------------------- material


def ensure_material(data_dir: Path, *, formatted: bool, now: datetime | None = None) -> Path:
    """Create what a secured broker of ``data_dir`` needs and return its security dir.

    Passwords are created once: after the storage is formatted the SCRAM users exist with
    them, so lost password files cannot be recreated (BrokerError). TLS material is
    (re)generated when a file is missing or the certificates expire within 30 days.
    """
    security_dir = data_dir / SECURITY_DIR
    security_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(security_dir, 0o700)  # mkdir's mode is masked by the umask
    missing = [user for user in USERS if not (security_dir / f"{user}.password").is_file()]
    if missing and formatted:
        raise BrokerError(
            f"{data_dir} holds a broker formatted without SCRAM users "
            f"{', '.join(missing)} (a plaintext broker, or password files deleted from "
            f"{security_dir}); start it without security, or use a new data dir")
    for user in missing:
        write_private(security_dir / f"{user}.password", secrets.token_urlsafe(24) + "\n")
    if _tls_needs_renewal(security_dir, now or datetime.now(tz=UTC)):
        generate_tls(security_dir, now=now)
    return security_dir


def is_secured(data_dir: Path) -> bool:
    """Whether ``data_dir`` belongs to a secured broker (its admin password exists)."""
    return (data_dir / SECURITY_DIR / f"{ADMIN_USER}.password").is_file()


def generate_tls(security_dir: Path, *, now: datetime | None = None) -> None:
    """A fresh CA, broker certificate/keystore and client certificates in ``security_dir``."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    started = time.monotonic()
    now = now or datetime.now(tz=UTC)
    # Gone until the set is complete: an interrupted run is regenerated at the next start,
    # never taken for a CA that signed the files beside it.
    (security_dir / _CA_FILE).unlink(missing_ok=True)
    ca_key, ca_cert = _ca(now)
    broker_key, broker_cert = _leaf(ca_key, ca_cert, BROKER_PRINCIPAL, now, server=True)
    password = secrets.token_urlsafe(24)
    encryption = (serialization.PrivateFormat.PKCS12.encryption_builder()
                  .kdf_rounds(10_000)
                  .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                  .hmac_hash(hashes.SHA256())
                  .build(password.encode()))
    keystore = pkcs12.serialize_key_and_certificates(
        BROKER_PRINCIPAL.encode(), broker_key, broker_cert, [ca_cert], encryption)
    write_private(security_dir / _KEYSTORE_PASSWORD_FILE, password + "\n")
    write_private(security_dir / _BROKER_KEYSTORE_FILE, keystore)
    _write_public(security_dir / _BROKER_CERT_FILE, _pem(broker_cert))
    for user in USERS:
        key, cert = _leaf(ca_key, ca_cert, user, now, server=False)
        write_private(security_dir / f"{user}.key.pem", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        _write_public(security_dir / f"{user}.crt.pem", _pem(cert))
    # Written last: its presence with a valid date is what says the set is complete.
    _write_public(security_dir / _CA_FILE, _pem(ca_cert))
    log.info("kafka.broker.tls_generated", security_dir=str(security_dir),
             not_after=(now + _VALIDITY).isoformat(),
             seconds=round(time.monotonic() - started, 2))


def _tls_needs_renewal(security_dir: Path, now: datetime) -> bool:
    from cryptography import x509

    files = [_CA_FILE, _BROKER_CERT_FILE, _BROKER_KEYSTORE_FILE, _KEYSTORE_PASSWORD_FILE]
    for user in USERS:
        files += [f"{user}.crt.pem", f"{user}.key.pem"]
    if not all((security_dir / name).is_file() for name in files):
        return True
    for name in (_CA_FILE, _BROKER_CERT_FILE, *(f"{u}.crt.pem" for u in USERS)):
        try:
            cert = x509.load_pem_x509_certificate((security_dir / name).read_bytes())
        except ValueError:
            return True
        if cert.not_valid_after_utc - now < _RENEW_BEFORE:
            return True
    return False


def _ca(now: datetime) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _CA_NAME)])
    cert = (
        _validity(x509.CertificateBuilder(), now)
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        # path_length=0: the CA signs leaves only, never intermediate CAs.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(ca_key: Any, ca_cert: Any, common_name: str, now: datetime, *,
          server: bool) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    # The broker's certificate is also its client certificate on INTERNAL and CONTROLLER.
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server
              else [ExtendedKeyUsageOID.CLIENT_AUTH])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        _validity(x509.CertificateBuilder(), now)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
    )
    if server:
        names: list[x509.GeneralName] = [x509.DNSName(h) for h in _BROKER_HOSTS]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in _BROKER_IPS]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _validity(builder: Any, now: datetime) -> Any:
    from cryptography import x509

    return (builder.serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW).not_valid_after(now + _VALIDITY))


def _key_usage(*, cert_sign: bool) -> Any:
    from cryptography import x509

    # ECDSA keys sign (handshakes, or certificates for the CA); they never encipher keys.
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    data: bytes = cert.public_bytes(serialization.Encoding.PEM)
    return data


# --------------------------------------------------------------------------- files


def write_private(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only, atomically (a reader never
    sees a half-written secret, and the file is never briefly world-readable)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_secret(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


# --------------------------------------------------------------------------- ACLs


def grant(secured: SecuredBroker, principal: str, resource_type: str | Enum, name: str,
          pattern: str | Enum = "LITERAL", operation: str | Enum = "ALL", *,
          host: str = "*", timeout_s: float = _GRANT_TIMEOUT_S) -> None:
    """Allow ``principal`` (``"User:app"``) ``operation`` on a resource, as ``admin``.

    Names are confluent-kafka's enum members or their names (``"TOPIC"``, ``"LITERAL"``,
    ``"READ"``; ``"CLUSTER"`` for the cluster, whose resource name is ``kafka-cluster``).
    Returns once the broker's authorizer shows the ACL, so the next request is judged with
    it (KRaft applies ACLs when the broker replays the metadata log, slightly after
    CreateAcls returns).
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    restype, pattern_type = _member(ResourceType, resource_type), _member(ResourcePatternType,
                                                                          pattern)
    op = _member(AclOperation, operation)
    binding = AclBinding(restype, name, pattern_type, principal, host, op,
                         AclPermissionType.ALLOW)
    deadline = time.monotonic() + timeout_s
    # log_level 3 (errors only): a refused or slow connection is reported by the exception.
    admin = AdminClient({**secured.client_config(ADMIN_USER, "sasl"), "log_level": 3})
    admin.create_acls([binding], request_timeout=timeout_s)[binding].result()
    query = AclBindingFilter(restype, name, pattern_type, principal, host, op,
                             AclPermissionType.ALLOW)
    while True:
        try:
            if binding in admin.describe_acls(query, request_timeout=5).result():
                break
        except KafkaException:
            pass  # a slow answer; the deadline below decides
        if time.monotonic() > deadline:
            raise TimeoutError(f"ACL {binding} not visible on the broker after {timeout_s}s")
        time.sleep(0.05)
    log.info("kafka.broker.acl_granted", principal=principal, resource_type=restype.name,
             name=name, pattern=pattern_type.name, operation=op.name)


# Kafka calls the cluster resource CLUSTER (kafka-acls --cluster); confluent-kafka's enum
# names it BROKER. Both are accepted.
_ALIASES = {"CLUSTER": "BROKER"}


def _member(enum_type: Any, value: str | Enum) -> Any:
    if isinstance(value, Enum):
        return value
    try:
        return enum_type[_ALIASES.get(value.upper(), value.upper())]
    except KeyError:
        valid = ", ".join(m.name for m in enum_type)
        raise ValueError(f"{value!r} is not one of {valid}") from None
