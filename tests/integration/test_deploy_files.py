"""The deployment files: docker-compose.yml, configs/kubernetes/, Prometheus and Grafana.

Neither docker nor a cluster is needed: the files are parsed and checked against each other,
against the settings the server really accepts and against the Kubernetes API schemas
(kubernetes-validate, strict). The Grafana dashboard's queries: test_deploy_dashboard.py.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deepseek_serve.http.auth import read_key_file
from deepseek_serve.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY_CONFIG = ROOT / "configs" / "deploy.yaml"
PROMETHEUS_FILE = ROOT / "configs" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "configs" / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "deepseek-serve.json"
K8S = ROOT / "configs" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # oldest Kubernetes the manifests promise to work on

SERVER_SERVICE = "deepseek-serve"  # compose service name of the server
ENV_PREFIX = "DEEPSEEK_SERVE_"
API_KEYS_ENV = "DEEPSEEK_SERVE_API_KEYS"
KEY_FILE_ENV = "DEEPSEEK_SERVE_API_KEY_FILE"
METRICS_KEY_ENV = "METRICS_API_KEY"  # Prometheus's key, in compose's shell and the Secret
METRICS_KEY_FILE = "metrics-key.txt"  # the same key as an API key file line

# Environment names the deployment files give the server besides DEEPSEEK_SERVE_<field>: the
# original DeepSeek-Coder deployment guide's.
GUIDE_ENV = {"PORT", "LOG_LEVEL", "MODEL_SIZE", "CUDA_VISIBLE_DEVICES"}
# The hardening settings the deployment files rely on.
HARDENING_SETTINGS = {"api_keys", "api_key_file", "shutdown_timeout", "log_format"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX) or key in GUIDE_ENV:
            monkeypatch.delenv(key)


# --- helpers -----------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, given ``env`` as the shell's."""

    def repl(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op and op.endswith("-"):
            return arg
        raise KeyError(f"{name} is required: {arg}" if op else name)

    return _INTERPOLATION.sub(repl, value)


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return doc


# What a user must export before `docker compose up` (the .env of the compose file's header).
REQUIRED_SHELL = {API_KEYS_ENV: "k1,k2", METRICS_KEY_ENV: "m", "GRAFANA_ADMIN_PASSWORD": "p"}


def compose_env(service: str, shell: dict[str, str] | None = None) -> dict[str, str]:
    raw = compose()["services"][service].get("environment", {})
    assert isinstance(raw, dict), "write environment as a mapping"
    shell = REQUIRED_SHELL if shell is None else shell
    return {k: interpolate(str(v), shell) for k, v in raw.items()}


def k8s_docs() -> dict[str, dict[str, Any]]:
    """Every manifest under configs/kubernetes by kind (one object of each kind)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_all_yaml(path):
            kind = doc["kind"]
            assert kind not in out, f"two {kind} objects"
            out[kind] = doc
    return out


def server_container() -> dict[str, Any]:
    containers = k8s_docs()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    matches = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert matches, f"no container port named {port!r}"
    return int(matches[0])


def seconds(duration: str | int) -> float:
    """Compose durations: 90s, 1m30s, 20m, 1h."""
    if isinstance(duration, int):
        return float(duration)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"not a duration: {duration!r}"
    h, m, s = (int(g or 0) for g in parts.groups())
    return float(h * 3600 + m * 60 + s)


def settings_field(env_name: str) -> str:
    return env_name.removeprefix(ENV_PREFIX).split("__")[0].lower()


def check_server_env_names(names: set[str], where: str) -> None:
    known = set(Settings.model_fields)
    for name in names:
        if name.startswith(ENV_PREFIX):
            assert settings_field(name) in known, f"{where}: {name} is no setting"
        else:
            assert name in GUIDE_ENV, f"{where}: unexpected variable {name}"


def set_server_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """The deployment's environment for the server."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def check_metrics_key_line(line: str, key: str) -> None:
    """``line`` gives the server ``key`` with no request limit and the permission to read
    /metrics (an API key file line)."""
    secret, *options = line.split()
    assert secret == key
    fields = dict(option.split("=", 1) for option in options)
    assert fields.get("requests", "").lower() in {"none", "off"}, "Prometheus would be limited"
    # the server's own parser agrees
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "keys.txt"
        path.write_text(line + "\n")
        (parsed,) = read_key_file(path, Settings())
    assert parsed.request_limit is None
    assert parsed.metrics, "Prometheus would get 403 on /metrics"


# --- every file parses ---------------------------------------------------------------------------


def test_every_deployment_file_parses() -> None:
    yaml_files = [
        COMPOSE_FILE,
        DEPLOY_CONFIG,
        PROMETHEUS_FILE,
        *GRAFANA.rglob("*.yml"),
        *GRAFANA.rglob("*.yaml"),
        *K8S.glob("*.yaml"),
    ]
    assert len(yaml_files) >= 10
    for path in yaml_files:
        assert load_all_yaml(path), f"{path} is empty"
    for path in GRAFANA.rglob("*.json"):
        assert isinstance(json.loads(path.read_text()), dict)
    # The ConfigMap's embedded config parses too.
    assert isinstance(yaml.safe_load(k8s_docs()["ConfigMap"]["data"]["config.yaml"]), dict)


# --- the server's config and environment ---------------------------------------------------------


def test_deploy_config_validates_as_settings() -> None:
    settings = load_settings(config_file=DEPLOY_CONFIG)
    assert settings.host == "0.0.0.0"  # reachable from outside the container
    assert settings.enable_prefix_caching is True


def test_configmap_config_validates_and_equals_the_compose_config(tmp_path: Path) -> None:
    embedded = k8s_docs()["ConfigMap"]["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(embedded)
    from_configmap = load_settings(config_file=path)
    assert from_configmap == load_settings(config_file=DEPLOY_CONFIG)
    assert yaml.safe_load(embedded) == load_yaml(DEPLOY_CONFIG)


def test_settings_reject_a_broken_config(tmp_path: Path) -> None:
    """The two tests above could not pass on a config the server would refuse."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(DEPLOY_CONFIG.read_text() + "max_model_lenght: 4096\n")
    with pytest.raises(ValueError, match="max_model_lenght"):
        load_settings(config_file=broken)


def test_server_environment_names_are_real_settings() -> None:
    check_server_env_names(set(compose_env(SERVER_SERVICE)), "docker-compose.yml")
    check_server_env_names(set(container_env(server_container())), "deployment.yaml")
    with pytest.raises(AssertionError, match="is no setting"):
        check_server_env_names({"DEEPSEEK_SERVE_TENSOR_PARALEL_SIZE"}, "typo")


def test_the_hardening_settings_the_files_use_exist() -> None:
    missing = HARDENING_SETTINGS - set(Settings.model_fields)
    assert not missing, f"settings the deployment files rely on are gone: {missing}"


def test_compose_environment_loads_with_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    shell = {**REQUIRED_SHELL, "DEEPSEEK_SERVE_TENSOR_PARALLEL_SIZE": "2"}
    set_server_env(monkeypatch, compose_env(SERVER_SERVICE, shell))
    settings = load_settings(config_file=DEPLOY_CONFIG)
    assert settings.tensor_parallel_size == 2
    assert settings.port == server_port_in_compose()
    assert [k.get_secret_value() for k in settings.api_keys] == ["k1", "k2"]
    assert settings.log_format == "json"


def test_compose_refuses_to_start_without_keys() -> None:
    with pytest.raises(KeyError, match=API_KEYS_ENV):
        compose_env(SERVER_SERVICE, {METRICS_KEY_ENV: "m"})
    with pytest.raises(KeyError, match=METRICS_KEY_ENV):
        interpolate(compose()["configs"]["metrics_key_file"]["content"], {API_KEYS_ENV: "k"})


def test_kubernetes_environment_loads_with_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = server_container()
    set_server_env(monkeypatch, literal_env(container))
    path = tmp_path / "config.yaml"
    path.write_text(k8s_docs()["ConfigMap"]["data"]["config.yaml"])
    settings = load_settings(config_file=path)
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert settings.tensor_parallel_size == int(gpus), "one engine over all the pod's GPUs"
    assert settings.port == resolve_port(container, "http")
    assert settings.api_key_file is not None and settings.log_format == "json"


def test_guide_environment_names_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_SIZE", "33b")
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = load_settings(config_file=DEPLOY_CONFIG)
    assert settings.model == "deepseek-ai/deepseek-coder-33b-instruct"
    assert (settings.port, settings.log_level) == (9123, "debug")
    monkeypatch.setenv("MODEL_SIZE", "6.7b")
    assert load_settings().model == "deepseek-ai/deepseek-coder-6.7b-instruct"


# --- docker-compose.yml --------------------------------------------------------------------------


def server_port_in_compose() -> int:
    service = compose()["services"][SERVER_SERVICE]
    (mapping,) = service["ports"]
    container_port = int(str(mapping).rsplit(":", 1)[1])
    assert compose_env(SERVER_SERVICE)["PORT"] == str(container_port)
    return container_port


def test_compose_builds_the_cuda_image_with_gpus() -> None:
    service = compose()["services"][SERVER_SERVICE]
    build = service["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
    assert "vllm/vllm-openai" in (ROOT / "Dockerfile").read_text()
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert service["ipc"] == "host" or "shm_size" in service


def test_compose_healthcheck_hits_health_on_the_server_port() -> None:
    service = compose()["services"][SERVER_SERVICE]
    command = " ".join(service["healthcheck"]["test"])
    urls = re.findall(r"https?://[^'\" ]+", command)
    assert urls == [f"http://127.0.0.1:{server_port_in_compose()}/health"]
    assert seconds(service["healthcheck"]["start_period"]) >= 15 * 60  # a 33B load


def test_compose_mounts_only_files_of_the_repository() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    server = services[SERVER_SERVICE]
    config_path = server["command"][server["command"].index("--config") + 1]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in server["volumes"]}
    assert (ROOT / mounts[config_path]).resolve() == DEPLOY_CONFIG


def test_prometheus_scrapes_the_server_metrics_with_a_key() -> None:
    doc = compose()
    prometheus = doc["services"]["prometheus"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in prometheus["volumes"]}
    assert (ROOT / mounts["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS_FILE

    (job,) = load_yaml(PROMETHEUS_FILE)["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (static,) = job["static_configs"]
    assert static["targets"] == [f"{SERVER_SERVICE}:{server_port_in_compose()}"]
    # Prometheus's token file is the compose secret made from METRICS_API_KEY ...
    auth = job["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    secret = auth["credentials_file"].removeprefix("/run/secrets/")
    assert secret in prometheus["secrets"]
    assert doc["secrets"][secret] == {"environment": METRICS_KEY_ENV}
    # ... and the server reads the same key, unlimited, from its API key file.
    server = doc["services"][SERVER_SERVICE]
    key_file = compose_env(SERVER_SERVICE)[KEY_FILE_ENV]
    (config,) = [c for c in server["configs"] if c["target"] == key_file]
    content = interpolate(doc["configs"][config["source"]]["content"], REQUIRED_SHELL)
    check_metrics_key_line(content.strip(), REQUIRED_SHELL[METRICS_KEY_ENV])


def test_grafana_is_provisioned_with_the_datasource_and_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in grafana["volumes"]}
    provisioning = (ROOT / mounts["/etc/grafana/provisioning"]).resolve()
    assert provisioning == GRAFANA / "provisioning"

    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"  # the compose service
    assert "prometheus" in compose()["services"]

    (provider,) = load_yaml(provisioning / "dashboards" / "deepseek-serve.yml")["providers"]
    dashboards_dir = (ROOT / mounts[provider["options"]["path"]]).resolve()
    assert DASHBOARD_FILE.parent == dashboards_dir
    # Monitoring UIs are not published beyond the host.
    for name in ("prometheus", "grafana"):
        for port in compose()["services"][name]["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} to everyone"


# --- Kubernetes ----------------------------------------------------------------------------------


def test_manifests_match_the_kubernetes_api_schemas() -> None:
    docs = k8s_docs()
    core = {"Deployment", "Service", "ConfigMap", "Secret"}
    assert core <= set(docs)
    for version in (KUBERNETES_VERSION, kubernetes_validate.latest_version()):
        for kind in core:
            kubernetes_validate.validate(docs[kind], version, strict=True)
    # Strict validation catches a misspelt field.
    bad = json.loads(json.dumps(docs["Deployment"]))
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_the_manifests_but_not_the_example_secret() -> None:
    resources = load_yaml(K8S / "kustomization.yaml")["resources"]
    for name in resources:
        assert (K8S / name).is_file()
    assert {"deployment.yaml", "service.yaml", "configmap.yaml"} <= set(resources)
    assert "secret.example.yaml" not in resources


def test_deployment_gpus_probes_and_ports() -> None:
    container = server_container()
    port = int(container_env(container)["PORT"]["value"])
    assert resolve_port(container, "http") == port
    limits = container["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == "/health", probe
        assert resolve_port(container, http["port"]) == port, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60  # a 33B load
    # Readiness reacts faster than liveness: a draining or failed server leaves the Service first.
    ready, live = container["readinessProbe"], container["livenessProbe"]
    assert (
        ready["periodSeconds"] * ready["failureThreshold"]
        < live["periodSeconds"] * live["failureThreshold"]
    )


def test_service_reaches_the_pods() -> None:
    docs = k8s_docs()
    pod = docs["Deployment"]["spec"]["template"]
    selector = docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    service = docs["Service"]["spec"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["ports"]
    assert resolve_port(server_container(), port["targetPort"]) == int(
        container_env(server_container())["PORT"]["value"]
    )


def test_deployment_runs_as_the_image_user_without_privileges() -> None:
    uid = int(re.findall(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text())[0])
    pod = k8s_docs()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    container = server_container()["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]


def test_deployment_reads_the_configmap_config() -> None:
    docs = k8s_docs()
    container = server_container()
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    volumes = {v["name"]: v for v in docs["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    assert volumes[mount["name"]]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert config_path.name in docs["ConfigMap"]["data"]


def test_deployment_takes_the_api_keys_from_the_secret() -> None:
    docs = k8s_docs()
    secret = docs["Secret"]
    keys = secret["stringData"]
    env = container_env(server_container())
    ref = env[API_KEYS_ENV]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], API_KEYS_ENV)
    assert len(keys[API_KEYS_ENV].split(",")) >= 2  # the example shows the list
    # The key file: a Secret volume holding metrics-key.txt, where the variable says.
    key_file = Path(env[KEY_FILE_ENV]["value"])
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [
        m for m in server_container()["volumeMounts"] if m["mountPath"] == str(key_file.parent)
    ]
    source = volumes[mount["name"]]["secret"]
    assert source["secretName"] == secret["metadata"]["name"]
    assert {"key": METRICS_KEY_FILE, "path": key_file.name} in source["items"]
    # The example is consistent: the file's key is the one Prometheus sends.
    check_metrics_key_line(keys[METRICS_KEY_FILE], keys[METRICS_KEY_ENV])


def test_mounts_do_not_nest() -> None:
    """A volume mounted inside a ConfigMap or Secret mount (read-only) fails at pod start."""
    paths = [Path(m["mountPath"]) for m in server_container()["volumeMounts"]]
    for a in paths:
        for b in paths:
            assert a == b or not a.is_relative_to(b), f"{a} is inside {b}"


def test_servicemonitor_scrapes_metrics_with_the_secret_key() -> None:
    docs = k8s_docs()
    monitor = docs["ServiceMonitor"]["spec"]
    service = docs["Service"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    credentials = endpoint["authorization"]["credentials"]
    assert credentials == {"name": docs["Secret"]["metadata"]["name"], "key": METRICS_KEY_ENV}


def test_grace_periods_outlast_the_pre_stop_pause() -> None:
    pod = k8s_docs()["Deployment"]["spec"]["template"]["spec"]
    pre_stop = server_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + 30
    compose_grace = seconds(compose()["services"][SERVER_SERVICE]["stop_grace_period"])
    assert compose_grace >= pod["terminationGracePeriodSeconds"] - int(pre_stop[1])


def test_grace_periods_outlast_the_server_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = k8s_docs()["Deployment"]["spec"]["template"]["spec"]
    pre_stop = int(server_container()["lifecycle"]["preStop"]["exec"]["command"][1])
    set_server_env(monkeypatch, literal_env(server_container()))
    drain = load_settings(config_file=DEPLOY_CONFIG).shutdown_timeout
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain

    set_server_env(monkeypatch, compose_env(SERVER_SERVICE))
    drain = load_settings(config_file=DEPLOY_CONFIG).shutdown_timeout
    assert seconds(compose()["services"][SERVER_SERVICE]["stop_grace_period"]) > drain


# --- the image -----------------------------------------------------------------------------------


def test_image_takes_the_model_and_port_from_the_environment() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    env_block = re.search(r"^ENV (.*?)(?<!\\)\n", dockerfile, re.S | re.M)
    assert env_block
    assert {"MODEL_SIZE", "PORT"} <= set(re.findall(r"(\w+)=", env_block.group(1)))
    # A default flag would beat the environment (flags > environment).
    assert not re.search(r"^CMD .*--model", dockerfile, re.M)
    healthcheck = dockerfile[dockerfile.index("HEALTHCHECK") :]
    assert "/health" in healthcheck and "'PORT'" in healthcheck
