"""Kafka client.properties: parsed like Kafka's own tools, translated or refused, checked.

No service is needed: librdkafka checks the settings by building a client that connects
nowhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from pydantic import ValidationError

from heartbeat_platform.config import load_settings
from heartbeat_platform.streaming.kafka_config import (
    KafkaConfigError,
    client_config,
    read_properties,
    translate,
)

NO_VARIABLES: dict[str, str | None] = {}


def write(tmp_path: Path, text: str, name: str = "client.properties") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_java_properties_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "# a comment\n"
        "! another comment\n"
        "security.protocol=SASL_SSL\n"
        "sasl.mechanism : PLAIN\n"
        "   bootstrap.servers   broker-1:9092,broker-2:9092\n"
        "sasl.username = key\\\n"
        "    -continued\n"
        "sasl.password=p\\u00e4ss=word:#!\n"
        "client.id=first\n"
        "client.id=second\n"
    ))
    assert read_properties(path) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "bootstrap.servers": "broker-1:9092,broker-2:9092",
        "sasl.username": "key-continued",
        "sasl.password": "päss=word:#!",
        "client.id": "second",  # the last one wins, as in Java
    }


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KafkaConfigError, match=r"KAFKA_CLIENT_PROPERTIES: .*nope.properties does "
                                               r"not exist"):
        client_config(tmp_path / "nope.properties", NO_VARIABLES)


def test_file_then_variables_over_it(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "bootstrap.servers=kafka.example.com:9093\n"
        "security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n"
        "sasl.username=from-file\nsasl.password=file-secret\nlinger.ms=50\n"
    ))
    config, bootstrap = client_config(path, {
        "sasl.username": "from-env", "sasl.mechanism": "SCRAM-SHA-512", "ssl.ca.location": None,
    })
    assert bootstrap == "kafka.example.com:9093"
    assert config == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "from-env", "sasl.password": "file-secret", "linger.ms": "50",
    }


@pytest.mark.parametrize(
    ("jaas", "username", "password"),
    [
        ('org.apache.kafka.common.security.plain.PlainLoginModule required '
         'username="ABC" password="s3cr=t;x";', "ABC", "s3cr=t;x"),
        ('org.apache.kafka.common.security.scram.ScramLoginModule required '
         'username="app" password="with \\"quote\\"";', "app", 'with "quote"'),
        ("org.apache.kafka.common.security.plain.PlainLoginModule required "
         "username=bare password=plain;", "bare", "plain"),
    ],
)
def test_jaas_for_plain_and_scram_becomes_username_and_password(
    jaas: str, username: str, password: str
) -> None:
    out = translate({"sasl.jaas.config": jaas, "sasl.mechanism": "PLAIN"}, "f")
    assert out == {"sasl.mechanism": "PLAIN", "sasl.username": username,
                   "sasl.password": password}


def test_jaas_with_another_login_module_is_refused() -> None:
    jaas = ("org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required "
            "clientId='x';")
    with pytest.raises(KafkaConfigError, match=r"client.properties: sasl.jaas.config with "
                                               r".*OAuthBearerLoginModule.*sasl.oauthbearer"):
        translate({"sasl.jaas.config": jaas}, "client.properties")


def test_jaas_and_a_different_explicit_username_conflict() -> None:
    jaas = ('org.apache.kafka.common.security.plain.PlainLoginModule required '
            'username="a" password="b";')
    with pytest.raises(KafkaConfigError, match="sasl.username is given twice"):
        translate({"sasl.jaas.config": jaas, "sasl.username": "other"}, "f")


def test_hostname_check_switched_off_the_java_way_becomes_none() -> None:
    assert translate({"ssl.endpoint.identification.algorithm": ""}, "f") == {
        "ssl.endpoint.identification.algorithm": "none"}
    assert translate({"ssl.endpoint.identification.algorithm": "https"}, "f") == {
        "ssl.endpoint.identification.algorithm": "https"}


def test_a_pem_truststore_becomes_the_ca_location() -> None:
    out = translate({"ssl.truststore.type": "PEM", "ssl.truststore.location": "/ca.pem"}, "f")
    assert out == {"ssl.ca.location": "/ca.pem"}


@pytest.mark.parametrize("kind", [None, "JKS", "PKCS12"])
def test_a_java_truststore_is_refused_with_what_to_do(kind: str | None) -> None:
    props = {"ssl.truststore.location": "/trust.jks", "ssl.truststore.password": "x"}
    if kind:
        props["ssl.truststore.type"] = kind
    with pytest.raises(KafkaConfigError, match=r"f: ssl.truststore.location .*keytool "
                                               r"-exportcert.*ssl.ca.location"):
        translate(props, "f")


def test_keystores_pkcs12_kept_jks_refused() -> None:
    props = {"ssl.keystore.type": "PKCS12", "ssl.keystore.location": "/k.p12",
             "ssl.keystore.password": "x"}
    assert translate(props, "f") == {"ssl.keystore.location": "/k.p12",
                                     "ssl.keystore.password": "x"}
    with pytest.raises(KafkaConfigError, match="ssl.keystore.type=JKS"):
        translate({"ssl.keystore.type": "JKS", "ssl.keystore.location": "/k.jks"}, "f")


def test_schema_registry_keys_are_ignored() -> None:
    props = {"schema.registry.url": "https://sr", "basic.auth.credentials.source": "USER_INFO",
             "basic.auth.user.info": "a:b", "security.protocol": "SSL"}
    assert translate(props, "f") == {"security.protocol": "SSL"}


def test_a_key_librdkafka_does_not_know_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "security.protocol=SSL\nssl.enabled.protocols=TLSv1.2\n")
    with pytest.raises(KafkaConfigError) as caught:
        client_config(path, NO_VARIABLES)
    message = str(caught.value)
    assert str(path) in message and "ssl.enabled.protocols" in message


def test_a_bad_value_is_named_with_its_variable() -> None:
    with pytest.raises(KafkaConfigError) as caught:
        client_config(None, {"security.protocol": "TLS"})
    message = str(caught.value)
    assert "KAFKA_SECURITY_PROTOCOL" in message and '"security.protocol"' in message


def test_a_missing_certificate_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, f"security.protocol=SSL\nssl.ca.location={tmp_path}/ca.pem\n")
    with pytest.raises(KafkaConfigError, match=r"ssl.ca.location=.*/ca.pem: no such file"):
        client_config(path, NO_VARIABLES)


def test_settings_build_the_one_client_config(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))  # librdkafka loads it
    path = write(tmp_path, (
        "bootstrap.servers=kafka.example.com:9093\nsecurity.protocol=SASL_SSL\n"
        "sasl.mechanism=PLAIN\nsasl.jaas.config=org.apache.kafka.common.security.plain."
        'PlainLoginModule required username="u" password="p";\n'
    ))
    settings = load_settings(
        _env_file=None, kafka_client_properties=path, kafka_sasl_password="override",
        kafka_ssl_ca_location=str(ca),
    )
    assert settings.kafka_bootstrap_servers == "kafka.example.com:9093"  # from the file
    assert settings.kafka_client_config == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "u",
        "sasl.password": "override", "ssl.ca.location": str(ca),
    }
    explicit = load_settings(
        _env_file=None, kafka_client_properties=path, kafka_bootstrap_servers="other:9093"
    )
    assert explicit.kafka_bootstrap_servers == "other:9093"  # the variable wins
    assert "bootstrap.servers" not in explicit.kafka_client_config


def test_no_settings_no_overrides() -> None:
    assert load_settings(_env_file=None).kafka_client_config == {}


def test_security_without_a_cluster_is_a_configuration_error() -> None:
    with pytest.raises(ValidationError, match="KAFKA_BOOTSTRAP_SERVERS"):
        load_settings(_env_file=None, kafka_security_protocol="SSL")


def test_dagster_processes_get_the_same_client_settings(tmp_path: Path, monkeypatch) -> None:
    """`up` hands its settings to Dagster's processes as variables: the password too."""
    from heartbeat_platform.defs.resources import settings_environment

    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n")
    settings = load_settings(
        _env_file=None, kafka_bootstrap_servers="kafka:9093", kafka_client_properties=path.name,
        kafka_sasl_username="app", kafka_sasl_password="s3cret",
    )
    environment = settings_environment(settings)
    assert environment["KAFKA_CLIENT_PROPERTIES"] == str(path)  # absolute: any working dir
    assert environment["KAFKA_SASL_PASSWORD"] == "s3cret"  # not pydantic's "**********"
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir("/")
    assert load_settings(_env_file=None).kafka_client_config == settings.kafka_client_config


# A key of the file that would break a guarantee: (line, KAFKA_GROUP_PROTOCOL, why).
BREAKS_A_GUARANTEE = [
    ("auto.offset.reset=earliest", "classic", "must reach the consumer"),
    ("auto.offset.reset=latest", "classic", "must reach the consumer"),
    ("topic.auto.offset.reset=smallest", "classic", "must reach the consumer"),
    ("enable.idempotence=false", "classic", "the producer is idempotent"),
    ("acks=1", "classic", "acks=all"),
    ("request.required.acks=0", "classic", "acks=all"),
    ("transactional.id=heartbeat", "classic", "not transactional"),
    ("delivery.report.only.error=true", "classic", "every message's delivery report"),
    ("partitioner=random", "classic", "ignores the key"),
    ("enable.auto.commit=true", "classic", "after the database commit"),
    ("enable.auto.commit=1", "classic", "after the database commit"),
    ("enable.auto.offset.store=true", "classic", "only once its batch is in the database"),
    ("isolation.level=read_uncommitted", "classic", "committed messages only"),
    ("group.id=another-group", "classic", "set KAFKA_GROUP_ID instead"),
    ("group.protocol=consumer", "classic", "set KAFKA_GROUP_PROTOCOL instead"),
    ("group.instance.id=worker-1", "classic", "fence each other"),
    ("session.timeout.ms=45000", "consumer", "KIP-848"),
    ("heartbeat.interval.ms=3000", "consumer", "KIP-848"),
    ("partition.assignment.strategy=range", "consumer", "KIP-848"),
]


@pytest.mark.parametrize(("line", "protocol", "why"), BREAKS_A_GUARANTEE)
def test_a_key_that_breaks_a_guarantee_is_refused_in_one_line_naming_file_and_key(
    tmp_path: Path, line: str, protocol: str, why: str
) -> None:
    path = write(tmp_path, f"security.protocol=PLAINTEXT\n{line}\nlinger.ms=5\n")
    with pytest.raises(KafkaConfigError) as caught:
        client_config(path, NO_VARIABLES, protocol)
    message = str(caught.value)
    assert message.startswith(f"KAFKA_CLIENT_PROPERTIES {path}: {line} is refused: ")
    assert why in message and "\n" not in message


@pytest.mark.parametrize(("line", "protocol", "why"), BREAKS_A_GUARANTEE)
def test_settings_refuse_it_when_they_are_loaded(
    tmp_path: Path, line: str, protocol: str, why: str
) -> None:
    path = write(tmp_path, f"{line}\n")
    with pytest.raises(ValidationError, match=f"{line} is refused: .*{why}"):
        load_settings(_env_file=None, kafka_client_properties=path, kafka_group_protocol=protocol)


@pytest.mark.parametrize(
    ("line", "protocol"),
    [
        # the platform's own values, as generated client.properties files often repeat them
        ("acks=all", "classic"), ("acks=-1", "classic"), ("enable.idempotence=true", "classic"),
        ("enable.auto.commit=false", "classic"), ("enable.auto.offset.store=false", "classic"),
        ("auto.offset.reset=error", "classic"), ("isolation.level=read_committed", "classic"),
        # keyed partitioners keep a customer on one partition
        ("partitioner=murmur2_random", "classic"), ("partitioner=consistent_random", "classic"),
        # the classic protocol takes its session settings (Confluent Cloud's files set this)
        ("session.timeout.ms=45000", "classic"),
        ("partition.assignment.strategy=range", "classic"),
        # tuning, not guarantees
        ("linger.ms=50", "consumer"), ("queue.buffering.max.messages=1000", "consumer"),
        ("message.timeout.ms=600000", "consumer"), ("client.id=heartbeat", "consumer"),
        ("group.remote.assignor=uniform", "consumer"),
    ],
)
def test_keys_that_keep_the_guarantees_are_taken(tmp_path: Path, line: str, protocol: str) -> None:
    path = write(tmp_path, f"{line}\n")
    key, value = line.split("=")
    assert client_config(path, NO_VARIABLES, protocol)[0] == {key: value}


def test_what_idempotence_forbids_is_refused_by_librdkafka_when_loaded(tmp_path: Path) -> None:
    """librdkafka checks the settings as the platform's idempotent acks=all producer."""
    path = write(tmp_path, "max.in.flight=10\n")
    with pytest.raises(KafkaConfigError, match=r"librdkafka refuses it: .*max.in.flight.* <= 5"):
        client_config(path, NO_VARIABLES)


@pytest.mark.parametrize(
    "overrides",
    [{"enable.idempotence": False}, {"acks": "1"}, {"transactional.id": "t"},
     {"partitioner": "random"}],
)
def test_the_producer_refuses_such_overrides_before_making_a_client(overrides: dict) -> None:
    from heartbeat_platform.streaming.producer import HeartbeatProducer, ProducerConfig

    with pytest.raises(KafkaConfigError, match="the producer's Kafka overrides: .* is refused"):
        HeartbeatProducer(ProducerConfig("127.0.0.1:1", "t", overrides))


@pytest.mark.parametrize(
    ("overrides", "protocol"),
    [
        ({"enable.auto.commit": True}, "classic"), ({"auto.offset.reset": "earliest"}, "classic"),
        ({"enable.auto.offset.store": "true"}, "classic"), ({"group.id": "x"}, "classic"),
        ({"group.protocol": "consumer"}, "classic"), ({"session.timeout.ms": 45000}, "consumer"),
    ],
)
def test_the_consumer_refuses_such_overrides(overrides: dict, protocol: str) -> None:
    from heartbeat_platform.streaming.consumer_config import ConsumerConfig, client_settings

    config = ConsumerConfig("b:9092", "postgresql://x/y", "t", "g", group_protocol=protocol,
                            kafka_overrides=overrides)
    with pytest.raises(KafkaConfigError, match="the consumer's Kafka overrides: .* is refused"):
        client_settings(config)
