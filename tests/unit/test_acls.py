"""The ACLs an application needs (streamproc/kafka/acls.py) and how refusals are reported."""

from __future__ import annotations

from confluent_kafka import KafkaError

from streamproc.graph.compile import compile_topology
from streamproc.kafka.acls import Acl, refusal, required_acls
from topologies.wordcount import build


def test_wordcount_needs_exactly_these_acls() -> None:
    acls = required_acls(compile_topology(build("wc", "lines", "counts")))
    assert acls == sorted([
        Acl("Group", "wc", "PREFIXED", "Read"),
        Acl("Topic", "counts", "LITERAL", "DescribeConfigs"),
        Acl("Topic", "counts", "LITERAL", "Write"),
        Acl("Topic", "lines", "LITERAL", "Read"),
        Acl("Topic", "wc-", "PREFIXED", "All"),
        Acl("TransactionalId", "wc-", "PREFIXED", "Write"),
    ])
    tools = required_acls(compile_topology(build("wc", "lines", "counts")), tools=True)
    assert sorted(set(tools) - set(acls)) == [Acl("Group", "wc", "PREFIXED", "Delete"),
                                             Acl("Topic", "lines", "LITERAL", "Write")]
    assert Acl("Topic", "wc-", "PREFIXED", "All").command("User:app", "b:9093") == (
        "kafka-acls.sh --bootstrap-server b:9093 --add --allow-principal User:app "
        "--operation All --topic wc- --resource-pattern-type prefixed")
    assert Acl("Cluster", "kafka-cluster", "LITERAL", "IdempotentWrite").command("User:a") == (
        "kafka-acls.sh --bootstrap-server BOOTSTRAP --add --allow-principal User:a "
        "--operation IdempotentWrite --cluster")


def test_refusals_name_the_permission_and_other_errors_are_not_refusals() -> None:
    err = refusal(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "Group authorization failed"),
                  "consuming")
    assert err is not None
    assert str(err) == (
        "not authorized while consuming: Group authorization failed (the principal needs Read "
        "on the Group; `streamproc acls --app APP --topology MODULE` prints every ACL the "
        "application needs)")
    auth = refusal(KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED, "bad password"), "x")
    assert auth is not None and str(auth).startswith("authentication failed while x")
    assert refusal(KafkaError(KafkaError._TRANSPORT, "down"), "consuming") is None
