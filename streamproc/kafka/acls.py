"""The ACLs an application needs on a cluster with an authorizer, and what a refusal means.

Least privilege: an application's principal needs exactly

- READ on each user source topic (READ implies DESCRIBE in Kafka's authorizer),
- WRITE and DESCRIBE_CONFIGS on each sink topic (DESCRIBE_CONFIGS: the instance reads
  ``max.message.bytes`` and the timestamp limits of what it writes, runtime/limits.py),
- ALL on topics prefixed ``{app}-`` (it creates, reads, writes, describes and purges its
  changelog, repartition, dead-letter, late and instance-registry topics),
- READ on groups prefixed ``{app}`` (the application's group; ``{app}-dlq-replay`` for
  ``streamproc dlq replay``; reset alters the group's offsets),
- WRITE on transactional ids prefixed ``{app}-`` (one per instance, plus ``{app}-savepoint``
  and ``{app}-dlq-replay``; WRITE implies DESCRIBE).

The tools need two more (``tools=True``, ``streamproc acls --tools``): DELETE on the group
(``streamproc reset`` deletes it before it sets the new offsets) and WRITE on the source topics
(``streamproc dlq replay`` sends dead letters back there). Each was checked on a broker with
the StandardAuthorizer: without any one of them the
application (or reset) stops naming it (tests/integration/test_least_privilege.py). Brokers
older than Kafka 2.8 also ask for IDEMPOTENT_WRITE on the cluster (KIP-679 dropped it).

``streamproc acls --app X --topology M --principal User:P`` prints them as ``kafka-acls``
commands. A refusal at run time is never retried: the instance stops with one message naming
the permission and the resource (:func:`refusal`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError

from streamproc.errors import StreamprocError

# librdkafka codes that mean "the principal may not": retrying cannot help.
AUTHORIZATION_ERRORS = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: ("Topic", "Read/Write/Describe"),
    KafkaError.GROUP_AUTHORIZATION_FAILED: ("Group", "Read"),
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: ("Cluster", "IdempotentWrite"),
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: ("TransactionalId", "Write/Describe"),
}
_AUTHENTICATION = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}


class NotAuthorized(StreamprocError):
    """The cluster refused the application's principal: a configuration problem (grant the
    ACLs ``streamproc acls`` prints), never retried."""


@dataclass(frozen=True, order=True)
class Acl:
    resource: str  # Topic, Group, TransactionalId, Cluster
    name: str
    pattern: str  # LITERAL or PREFIXED
    operation: str  # Read, Write, Describe, DescribeConfigs, All, IdempotentWrite

    def command(self, principal: str, bootstrap: str = "BOOTSTRAP") -> str:
        target = {"Topic": f"--topic {self.name}", "Group": f"--group {self.name}",
                  "TransactionalId": f"--transactional-id {self.name}",
                  "Cluster": "--cluster"}[self.resource]
        pattern = " --resource-pattern-type prefixed" if self.pattern == "PREFIXED" else ""
        return (f"kafka-acls.sh --bootstrap-server {bootstrap} --add --allow-principal "
                f"{principal} --operation {self.operation} {target}{pattern}")


def required_acls(compiled: Any, *, tools: bool = False) -> list[Acl]:
    """What an instance of ``compiled`` needs (savepoint create included); with ``tools``,
    also what ``streamproc reset`` and ``streamproc dlq replay`` need."""
    app = compiled.application_id
    acls: set[Acl] = set()
    for topic in compiled.user_source_topics:
        acls.add(Acl("Topic", topic, "LITERAL", "Read"))
    for topic in compiled.sink_topics:
        acls |= {Acl("Topic", topic, "LITERAL", op) for op in ("Write", "DescribeConfigs")}
    acls |= {Acl("Topic", f"{app}-", "PREFIXED", "All"),
             Acl("Group", app, "PREFIXED", "Read"),
             Acl("TransactionalId", f"{app}-", "PREFIXED", "Write")}
    if tools:
        acls.add(Acl("Group", app, "PREFIXED", "Delete"))  # reset deletes the group
        acls |= {Acl("Topic", t, "LITERAL", "Write")  # dlq replay writes to the sources
                 for t in compiled.user_source_topics}
    return sorted(acls)


def refusal(err: KafkaError, what: str) -> NotAuthorized | None:
    """The error to stop with when ``err`` is an authorization or authentication refusal (of
    ``what``: 'consuming', 'producing', ...), else None."""
    code = err.code()
    if code in AUTHORIZATION_ERRORS:
        resource, operations = AUTHORIZATION_ERRORS[code]
        return NotAuthorized(
            f"not authorized while {what}: {err.str()} (the principal needs {operations} on "
            f"the {resource}; `streamproc acls --app APP --topology MODULE` prints every ACL "
            "the application needs)")
    if code in _AUTHENTICATION:
        return NotAuthorized(f"authentication failed while {what}: {err.str()} (check "
                             "sasl_username/sasl_password or the client certificate)")
    return None
