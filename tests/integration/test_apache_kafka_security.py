"""SASL_SSL with SCRAM-SHA-512 and ACLs on Apache Kafka 4.4: the pipeline as a managed
cluster runs it, each principal with the rights of the README's roles table, no more.

The broker has two client listeners: SASL_SSL (TLS with a CA made here, SCRAM-SHA-512
logins), the only one the platform is given, and a plaintext one whose anonymous principal
is the super user, for the test's own admin work (users, ACLs, a topic the pipeline must
not touch). StandardAuthorizer refuses whatever no ACL allows.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
)
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from cryptography.hazmat.primitives import serialization

from heartbeat_platform.local.apache_kafka import KafkaCluster
from heartbeat_platform.local.process import free_port
from heartbeat_platform.storage.migrations import migrate
from tests.support.cli import produce_then_consume, run_cli, stored

TOPIC = "heartbeat-secured"
GROUP = "heartbeat-secured-group"
PASSWORDS = {"setup": "setup-secret-1", "pipeline": "pipeline-secret-2"}


@dataclass(frozen=True)
class SecuredKafka:
    bootstrap_servers: str  # SASL_SSL: what the platform is given
    admin_servers: str  # plaintext, super user: the test's own admin door
    ca_file: Path

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.admin_servers})

    def client_properties(self, path: Path, user: str, password: str | None = None) -> Path:
        """A client.properties as a managed cluster hands it out."""
        path.write_text(
            "security.protocol=SASL_SSL\n"
            "sasl.mechanism=SCRAM-SHA-512\n"
            f"sasl.username={user}\n"
            f"sasl.password={password or PASSWORDS[user]}\n"
            f"ssl.ca.location={self.ca_file}\n"
        )
        return path

    def client(self, user: str) -> dict[str, str]:
        """librdkafka settings of a principal, for clients the test makes itself."""
        return {"bootstrap.servers": self.bootstrap_servers, "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": user,
                "sasl.password": PASSWORDS[user], "ssl.ca.location": str(self.ca_file)}


def _keystore(root: Path) -> tuple[Path, Path]:
    """The broker's PEM keystore (a PKCS#8 key and its chain, KIP-651) and the CA file."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    keystore = root / "keystore.pem"
    keystore.write_bytes(pkcs8 + b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    return keystore, root / "ca.pem"


def _allow(principal: str, resource: ResourceType, name: str,
           *operations: AclOperation) -> list[AclBinding]:
    return [AclBinding(resource, name, ResourcePatternType.LITERAL, f"User:{principal}", "*",
                       operation, AclPermissionType.ALLOW) for operation in operations]


@pytest.fixture(scope="module")
def secured_kafka(kafka_jars: Path, tmp_path_factory: pytest.TempPathFactory,
                  ) -> Iterator[SecuredKafka]:
    root = tmp_path_factory.mktemp("secured-kafka")
    keystore, ca_file = _keystore(root)
    cluster = KafkaCluster(root, size=1, libs=kafka_jars)
    node = cluster.node(1)
    sasl_port = free_port()
    while sasl_port in (node.broker_port, node.controller_port):
        sasl_port = free_port()
    node.properties.update({
        "listeners": f"PLAINTEXT://127.0.0.1:{node.broker_port},"
                     f"SASL_SSL://127.0.0.1:{sasl_port},"
                     f"CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.broker_port},"
                                f"SASL_SSL://127.0.0.1:{sasl_port}",
        "listener.security.protocol.map":
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(keystore),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": "User:ANONYMOUS",  # the plaintext and controller listeners only
    })
    try:
        cluster.start()
        secured = SecuredKafka(f"127.0.0.1:{sasl_port}", node.bootstrap_servers, ca_file)
        admin = secured.admin()
        upserts = [UserScramCredentialUpsertion(
            user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), password.encode())
            for user, password in PASSWORDS.items()]
        for future in admin.alter_user_scram_credentials(upserts).values():
            future.result(timeout=30)
        acls = [
            # setup (init-db): create the topic and read it back
            *_allow("setup", ResourceType.TOPIC, TOPIC, AclOperation.CREATE,
                    AclOperation.DESCRIBE),
            # pipeline: produce, consume in its group, probe the lag
            *_allow("pipeline", ResourceType.TOPIC, TOPIC, AclOperation.WRITE,
                    AclOperation.READ, AclOperation.DESCRIBE),
            *_allow("pipeline", ResourceType.GROUP, GROUP, AclOperation.READ),
        ]
        for future in admin.create_acls(acls).values():
            future.result(timeout=30)
        yield secured
    finally:
        cluster.stop()


@pytest.fixture
def as_principal(secured_kafka: SecuredKafka, database_url: str, tmp_path: Path):
    """as_principal(user, password=None): the CLI's environment for that principal."""

    def env(user: str, password: str | None = None, topic: str = TOPIC) -> dict[str, str]:
        properties = secured_kafka.client_properties(tmp_path / f"{user}.properties", user,
                                                     password)
        return {
            **os.environ,
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": secured_kafka.bootstrap_servers,
            "KAFKA_CLIENT_PROPERTIES": str(properties),
            "KAFKA_TOPIC": topic,
            "KAFKA_GROUP_ID": GROUP,
            "HEARTBEAT_STATE_DIR": str(tmp_path / "state"),
            "COLUMNS": "200",
        }

    return env


def test_the_pipeline_runs_over_sasl_ssl_with_only_its_acls(
    as_principal, secured_kafka, database_url, tmp_path
) -> None:
    init = run_cli("init-db", env=as_principal("setup"), cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert f"topic {TOPIC} created" in init.stdout, init.stdout

    pipeline = as_principal("pipeline")
    produce_then_consume(pipeline, tmp_path, events=2000, seed=5)
    assert stored(database_url) == 2000

    status = run_cli("status", "--json", env=pipeline, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["kafka"]["partitions"] == 3

    # Kafka's committed offsets (for lag tools) went to the group the ACL names
    admin = secured_kafka.admin()  # kept: a collected client never answers its futures
    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(GROUP)])
    committed = offsets[GROUP].result(timeout=30).topic_partitions
    assert sum(tp.offset for tp in committed if tp.offset >= 0) == 2000


def _refused(error: KafkaException | KafkaError) -> str:
    kafka_error = error.args[0] if isinstance(error, KafkaException) else error
    return kafka_error.name()


def test_the_pipeline_principal_can_do_nothing_more(secured_kafka) -> None:
    admin = secured_kafka.admin()
    other = "heartbeat-not-ours"
    for future in admin.create_topics([NewTopic(other, 1, 1)]).values():
        future.result(timeout=30)

    pipeline = AdminClient(secured_kafka.client("pipeline"))
    with pytest.raises(KafkaException) as created:
        pipeline.create_topics([NewTopic("heartbeat-made-by-pipeline", 1, 1)],
                               operation_timeout=10)["heartbeat-made-by-pipeline"].result(30)
    assert _refused(created.value) in ("TOPIC_AUTHORIZATION_FAILED",
                                       "CLUSTER_AUTHORIZATION_FAILED")
    assert "heartbeat-made-by-pipeline" not in admin.list_topics(timeout=30).topics

    producer = Producer({**secured_kafka.client("pipeline"), "message.timeout.ms": 10_000})
    reports: list[KafkaError | None] = []
    producer.produce(other, b"x", on_delivery=lambda error, _message: reports.append(error))
    producer.flush(30)
    assert len(reports) == 1 and reports[0] is not None
    assert reports[0].name() == "TOPIC_AUTHORIZATION_FAILED"

    # a group the ACLs do not name: the join is refused
    consumer = Consumer({**secured_kafka.client("pipeline"), "group.id": "someone-elses",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([TOPIC])
    refused = None
    deadline = time.monotonic() + 30
    while refused is None and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is not None:
            refused = message.error().name()
    consumer.close()
    assert refused == "GROUP_AUTHORIZATION_FAILED"


def test_init_db_under_the_pipeline_principal_is_refused_in_one_line(
    as_principal, secured_kafka, tmp_path
) -> None:
    result = run_cli("init-db", env=as_principal("pipeline", topic="heartbeat-pipeline-made"),
                  cwd=tmp_path)
    assert result.returncode != 0
    assert "heartbeat-pipeline-made" not in secured_kafka.admin().list_topics(timeout=30).topics
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 3, result.stderr
    assert "AUTHORIZATION" in result.stderr.upper(), result.stderr


def test_a_wrong_password_is_reported_as_an_authentication_failure(
    as_principal, database_url, tmp_path
) -> None:
    migrate(database_url)  # so that Kafka is what fails
    result = run_cli("produce", "--events", "1",
                  env=as_principal("pipeline", password="not-the-password"), cwd=tmp_path,
                  timeout=120)
    assert result.returncode != 0
    assert "authentication" in result.stderr.lower(), result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr
