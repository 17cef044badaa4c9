"""Kafka client settings for a real cluster: a `client.properties` file and a few variables.

Managed Kafka hands out a `client.properties` file in the format of Kafka's own (Java)
tools. librdkafka, under confluent-kafka, takes most of those keys by the same names but
not all: this module reads the file, translates the Java-only keys that have an exact
librdkafka equivalent, refuses the ones that have none with a message naming the file,
the key and what to write instead, and checks the result with librdkafka itself, so a
mistake shows when a command starts, not as a connection that never comes up.

Java-only keys (librdkafka's CONFIGURATION.md lists what it accepts):
- `sasl.jaas.config` with PlainLoginModule or ScramLoginModule: its username and password
  become `sasl.username` / `sasl.password`; any other login module is refused.
- `ssl.endpoint.identification.algorithm=` (empty: Java's way to switch hostname
  checking off) becomes `none`; `https` stays (librdkafka has the key, default https).
- `ssl.truststore.location` with `ssl.truststore.type=PEM` becomes `ssl.ca.location`; a
  JKS or PKCS12 truststore is refused (librdkafka reads PEM CA files only).
- `ssl.keystore.type=PKCS12` is dropped (librdkafka's `ssl.keystore.location` is PKCS#12);
  a JKS or PEM keystore is refused.
- Schema Registry keys (`schema.registry.*`, `basic.auth.*`), which Confluent's generated
  files carry, are ignored: the platform uses no Schema Registry.
- `bootstrap.servers` in the file is where to connect (see `Settings`), not a client
  override.
Every other key is passed to librdkafka as it is; one it does not know is an error.

The file's keys come after the platform's own settings, so a key that would break one of
the platform's guarantees (README, Guarantees) is refused when the settings are loaded,
with the file, the key and the reason in one line (`GUARDS`; the value the platform sets
itself is accepted): acks other than all, idempotence off, a transactional id, delivery
reports for errors only, a partitioner that ignores the key; the consumer's offset
handling (auto commit, auto offset store, auto.offset.reset, isolation.level); the
consumer group and its protocol, which come from variables (KAFKA_GROUP_ID,
KAFKA_GROUP_PROTOCOL) because the consumer's progress and its other settings depend on
them; a static member id, which every worker would share; and, with
KAFKA_GROUP_PROTOCOL=consumer (KIP-848), the classic protocol's session and assignor
keys, which librdkafka refuses only when the consumer is created. librdkafka's check
builds an idempotent acks=all producer from the settings, as the platform's producer is,
so what idempotence forbids (`max.in.flight` above 5, `retries=0`) shows too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from confluent_kafka import KafkaException, Producer
from jproperties import Properties

log = logging.getLogger(__name__)

_FILE_KEYS = ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location",
              "ssl.keystore.location", "ssl.crl.location")
_IGNORED_PREFIXES = ("schema.registry.", "basic.auth.")
_JAAS_MODULES = {
    "org.apache.kafka.common.security.plain.PlainLoginModule",
    "org.apache.kafka.common.security.scram.ScramLoginModule",
}
# librdkafka's warnings while only checking settings ("no bootstrap.servers", "a consumer
# property ignored by a producer") are noise: they go nowhere.
_quiet = logging.getLogger(f"{__name__}.validation")
_quiet.propagate = False
_quiet.addHandler(logging.NullHandler())
_JAAS_OPTION = re.compile(r'([\w.]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;"]+))')


class KafkaConfigError(ValueError):
    """The Kafka client settings cannot work; the message says where and what to write."""


def _is_true(value: str) -> bool:
    return value.strip().lower() in ("true", "t", "1")  # librdkafka's spellings of true


def _is_false(value: str) -> bool:
    return value.strip().lower() in ("false", "f", "0")


def _never(value: str) -> bool:
    return False


@dataclass(frozen=True)
class Guard:
    """A librdkafka key the platform relies on: `keeps(value)` is True for a value that
    keeps the guarantee (the platform's own), `why` says what another value would break."""

    keeps: Callable[[str], bool]
    why: str


GUARDS: dict[str, Guard] = {
    # the producer
    "acks": Guard(
        lambda v: v.strip().lower() in ("all", "-1"),
        "the producer writes with acks=all (a reading counts as delivered once every "
        "in-sync replica has it); remove the key",
    ),
    "enable.idempotence": Guard(
        _is_true,
        "the producer is idempotent (librdkafka's retries through an outage write no "
        "duplicate and keep each customer's order); remove the key",
    ),
    "transactional.id": Guard(
        _never,
        "the producer is idempotent, not transactional (it would have to begin a "
        "transaction for every send); remove the key",
    ),
    "delivery.report.only.error": Guard(
        _is_false,
        "every message's delivery report is counted (delivered, failed, uncertain); "
        "remove the key",
    ),
    "partitioner": Guard(
        lambda v: v.strip().lower() != "random",
        "readings are keyed by customer so that each customer's stay in order on one "
        "partition, and partitioner=random ignores the key; use a keyed partitioner "
        "(consistent_random, the default, or murmur2_random as Java clients do)",
    ),
    # the consumer
    "enable.auto.commit": Guard(
        _is_false,
        "the consumer commits offsets itself, after the database commit of the batch; "
        "auto commit would commit offsets of messages not yet stored; remove the key",
    ),
    "enable.auto.offset.store": Guard(
        _is_false,
        "the consumer stores an offset only once its batch is in the database; remove the key",
    ),
    "auto.offset.reset": Guard(
        lambda v: v.strip().lower() == "error",
        "an offset out of range (retention deleted unread messages, the log was truncated "
        "or replaced) must reach the consumer, which decides, counts and logs it; earliest "
        "or latest would skip or re-read silently; remove the key",
    ),
    "isolation.level": Guard(
        lambda v: v.strip().lower() == "read_committed",
        "the consumer reads committed messages only (a transactional writer's aborted "
        "messages are not readings); remove the key",
    ),
    "group.id": Guard(
        _never,
        "the consumer group is KAFKA_GROUP_ID (its progress in PostgreSQL is kept under "
        "that name, and a Kafka group of another name would split the partitions with "
        "consumers that keep progress elsewhere); set KAFKA_GROUP_ID instead",
    ),
    "group.protocol": Guard(
        _never,
        "the consumer's session and assignor settings depend on the group protocol; set "
        "KAFKA_GROUP_PROTOCOL instead",
    ),
    "group.instance.id": Guard(
        _never,
        "this file goes to every consumer worker, and workers sharing one static member "
        "id fence each other off; remove the key",
    ),
}
# Refused by librdkafka under KIP-848 (group.protocol=consumer): the broker owns them.
KIP_848_REFUSES = (
    "session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy",
    "group.protocol.type",
)
# librdkafka's other names for guarded keys (CONFIGURATION.md); "topic." prefixes a
# topic-level key given globally.
_ALIASES = {"request.required.acks": "acks", "auto.commit.enable": "enable.auto.commit"}


def canonical_key(key: str) -> str:
    key = key.removeprefix("topic.")
    return _ALIASES.get(key, key)


def refuse_broken_guarantees(
    config: Mapping[str, object], source: str, group_protocol: str = "classic"
) -> None:
    """Raise KafkaConfigError for the first key of `config` that would break a guarantee
    (`GUARDS`, and `KIP_848_REFUSES` with the consumer group protocol)."""
    for key, value in config.items():
        name = canonical_key(key)
        guard = GUARDS.get(name)
        if guard is not None and not guard.keeps(str(value)):
            raise KafkaConfigError(f"{source}: {key}={value} is refused: {guard.why}")
        if group_protocol == "consumer" and name in KIP_848_REFUSES:
            raise KafkaConfigError(
                f"{source}: {key}={value} is refused: with KAFKA_GROUP_PROTOCOL=consumer "
                "(KIP-848) the broker owns it and librdkafka refuses a consumer that sets it; "
                "remove the key (the classic protocol takes it)"
            )


def read_properties(path: Path) -> dict[str, str]:
    """The key/value pairs of a Java properties file (comments, `=`/`:`, continuations)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KafkaConfigError(f"KAFKA_CLIENT_PROPERTIES: {path} does not exist") from None
    except OSError as exc:
        raise KafkaConfigError(f"KAFKA_CLIENT_PROPERTIES: cannot read {path}: {exc}") from None
    properties = Properties()
    try:
        properties.load(data, "utf-8")
    except Exception as exc:  # noqa: BLE001 - jproperties raises plain Exceptions
        raise KafkaConfigError(f"{path}: not a properties file: {exc}") from None
    return dict(properties.properties)


def translate(properties: Mapping[str, str], source: str) -> dict[str, str]:
    """Java client keys -> librdkafka keys, as the module docstring says; `source` names
    where they came from in error messages."""
    props = {key.strip(): value.strip() for key, value in properties.items()}
    out: dict[str, str] = {}
    for key in list(props):
        if key.startswith(_IGNORED_PREFIXES):
            log.info("%s: ignoring %s (Schema Registry settings; none is used)", source, key)
            props.pop(key)
    if "sasl.jaas.config" in props:
        out.update(_from_jaas(props.pop("sasl.jaas.config"), source))
    if props.get("ssl.endpoint.identification.algorithm") == "":
        props["ssl.endpoint.identification.algorithm"] = "none"
    truststore_type = props.pop("ssl.truststore.type", "JKS").upper()
    if "ssl.truststore.location" in props:
        if truststore_type != "PEM":
            raise KafkaConfigError(
                f"{source}: ssl.truststore.location is a {truststore_type} truststore, which "
                "librdkafka cannot read; export the CA certificate as PEM (keytool -exportcert "
                "-rfc -keystore <truststore> -alias <alias> -file ca.pem) and set "
                "ssl.ca.location=ca.pem instead"
            )
        out["ssl.ca.location"] = props.pop("ssl.truststore.location")
        props.pop("ssl.truststore.password", None)  # a PEM file has none
    elif "ssl.truststore.password" in props:
        raise KafkaConfigError(
            f"{source}: ssl.truststore.password without ssl.truststore.location; librdkafka "
            "reads the CA from ssl.ca.location (PEM)"
        )
    keystore_type = props.pop("ssl.keystore.type", "PKCS12").upper()
    if keystore_type != "PKCS12":
        raise KafkaConfigError(
            f"{source}: ssl.keystore.type={keystore_type}: librdkafka reads a PKCS12 keystore "
            "(ssl.keystore.location, ssl.keystore.password) or PEM files "
            "(ssl.certificate.location, ssl.key.location, ssl.key.password)"
        )
    for key, value in props.items():
        if key in out and out[key] != value:
            raise KafkaConfigError(
                f"{source}: {key} is given twice with different values (once through "
                "sasl.jaas.config or ssl.truststore.location)"
            )
        out[key] = value
    return out


def _from_jaas(jaas: str, source: str) -> dict[str, str]:
    module = jaas.split(None, 1)[0] if jaas.strip() else ""
    if module not in _JAAS_MODULES:
        raise KafkaConfigError(
            f"{source}: sasl.jaas.config with {module or 'no login module'} has no librdkafka "
            "equivalent; for PLAIN or SCRAM give sasl.username and sasl.password, for OAUTHBEARER "
            "librdkafka's sasl.oauthbearer.* keys (e.g. sasl.oauthbearer.method=oidc)"
        )
    options = {
        name: bare if bare else re.sub(r"\\(.)", r"\1", quoted)
        for name, quoted, bare in _JAAS_OPTION.findall(jaas)
    }
    if "username" not in options or "password" not in options:
        raise KafkaConfigError(
            f"{source}: sasl.jaas.config ({module}) has no username=\"...\" password=\"...\""
        )
    return {"sasl.username": options["username"], "sasl.password": options["password"]}


def check_files(config: Mapping[str, str], source: str) -> None:
    """Certificate and key files must exist (librdkafka would say only "BIO lib")."""
    for key in _FILE_KEYS:
        value = config.get(key)
        if value and value != "probe" and not Path(value).exists():
            raise KafkaConfigError(f"{source}: {key}={value}: no such file")


@lru_cache(maxsize=32)
def _librdkafka_accepts(items: tuple[tuple[str, str], ...]) -> str | None:
    """librdkafka's own verdict on the settings (a client is built, nothing connects)."""
    try:
        Producer(dict(items), logger=_quiet)
    except KafkaException as exc:
        return exc.args[0].str()
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


# what the platform's producer always sets: librdkafka checks the rest against them
_PRODUCER_FIXED = {"acks": "all", "enable.idempotence": "true"}


def validate(config: Mapping[str, str], source: str) -> None:
    check_files(config, source)
    checked = {k: v for k, v in config.items() if canonical_key(k) not in _PRODUCER_FIXED}
    problem = _librdkafka_accepts(tuple(sorted({**checked, **_PRODUCER_FIXED}.items())))
    if problem:
        raise KafkaConfigError(f"{source}: librdkafka refuses it: {problem}")


def client_config(
    properties_file: Path | None,
    variables: Mapping[str, str | None],
    group_protocol: str = "classic",
) -> tuple[dict[str, str], str | None]:
    """librdkafka settings from the file, then the variables over it, checked.

    `variables` maps librdkafka keys to the values of their environment variables (None:
    unset); `group_protocol` is the consumer's (KAFKA_GROUP_PROTOCOL). Returns the
    settings without `bootstrap.servers`, and the file's `bootstrap.servers` (or None).
    """
    from_file: dict[str, str] = {}
    if properties_file is not None:
        source = f"KAFKA_CLIENT_PROPERTIES {properties_file}"
        from_file = translate(read_properties(properties_file), source)
        refuse_broken_guarantees(from_file, source, group_protocol)
    set_variables = {key: value for key, value in variables.items() if value is not None}
    config = {**from_file, **set_variables}
    bootstrap = config.pop("bootstrap.servers", None)
    sources = [f"KAFKA_CLIENT_PROPERTIES {properties_file}"] if properties_file else []
    sources += ["KAFKA_" + key.upper().replace(".", "_") for key in set_variables]
    validate(config, ", ".join(sources) or "Kafka client settings")
    return config, bootstrap


def needs_security(config: Mapping[str, str]) -> bool:
    return config.get("security.protocol", "PLAINTEXT").upper() != "PLAINTEXT"
