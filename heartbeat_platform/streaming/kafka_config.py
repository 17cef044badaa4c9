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
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
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


def validate(config: Mapping[str, str], source: str) -> None:
    check_files(config, source)
    problem = _librdkafka_accepts(tuple(sorted(config.items())))
    if problem:
        raise KafkaConfigError(f"{source}: librdkafka refuses it: {problem}")


def client_config(
    properties_file: Path | None, variables: Mapping[str, str | None]
) -> tuple[dict[str, str], str | None]:
    """librdkafka settings from the file, then the variables over it, checked.

    `variables` maps librdkafka keys to the values of their environment variables (None:
    unset). Returns the settings without `bootstrap.servers`, and the file's
    `bootstrap.servers` (or None).
    """
    from_file: dict[str, str] = {}
    if properties_file is not None:
        source = f"KAFKA_CLIENT_PROPERTIES {properties_file}"
        from_file = translate(read_properties(properties_file), source)
    set_variables = {key: value for key, value in variables.items() if value is not None}
    config = {**from_file, **set_variables}
    bootstrap = config.pop("bootstrap.servers", None)
    sources = [f"KAFKA_CLIENT_PROPERTIES {properties_file}"] if properties_file else []
    sources += ["KAFKA_" + key.upper().replace(".", "_") for key in set_variables]
    validate(config, ", ".join(sources) or "Kafka client settings")
    return config, bootstrap


def needs_security(config: Mapping[str, str]) -> bool:
    return config.get("security.protocol", "PLAINTEXT").upper() != "PLAINTEXT"
