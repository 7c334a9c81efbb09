"""The deploy files agree with the code: every YAML parses, every DINOSERVE_* name is a setting
(and every required setting is set), image names, the port and the probe paths match, and the
cluster sizes agree with each other."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel

from core.settings import Settings
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
# Files whose DINOSERVE_* names must be settings: the image, everything under deploy/, the guide.
SETTINGS_USERS = [DOCKERFILE, *sorted(p for p in DEPLOY.rglob("*") if p.is_file())]
SETTINGS_USERS.append(ROOT / "docs" / "operations.md")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    return load_all(DEPLOY / "compose.yaml")[0]


def k8s_docs() -> list[dict[str, Any]]:
    return [
        d for p in sorted(K8S.glob("*.yaml")) if p.name != "qdrant-values.yaml" for d in load_all(p)
    ]


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d.get("kind") == kind]


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a parsed YAML tree."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def containers(doc: Any) -> list[dict[str, Any]]:
    return [c for m in walk(doc) for c in m.get("containers", []) if isinstance(c, dict)]


def is_dinoserve(image: str) -> bool:
    return image.split(":")[0].rsplit("/", 1)[-1] == "dinoserve"


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class of a field's annotation (also inside `X | None`), else None."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def settings_variables(model: type[BaseModel] = Settings, prefix: str | None = None) -> dict:
    """{variable: required} for every field of the settings class, as pydantic-settings reads
    them: top-level field `x` → DINOSERVE_X, nested group `g` field `f` → DINOSERVE_G__F."""
    config = Settings.model_config
    if prefix is None:
        prefix = config["env_prefix"]
    names: dict[str, bool] = {}
    for name, field in model.model_fields.items():
        var = (prefix + name).upper()
        names[var] = field.is_required()
        sub = nested_model(field.annotation)
        if sub is not None:
            names.update(settings_variables(sub, var + config["env_nested_delimiter"]))
    return names


VARIABLES = settings_variables()


def used_variables() -> dict[str, set[str]]:
    """{DINOSERVE_* token: files} over the deploy files (prefixes like `DINOSERVE_QDRANT__` too)."""
    found: dict[str, set[str]] = {}
    for path in SETTINGS_USERS:
        for token in re.findall(r"\bDINOSERVE_[A-Z0-9_]+", path.read_text()):
            found.setdefault(token, set()).add(str(path.relative_to(ROOT)))
    return found


def env_of(container: dict[str, Any], configmaps: dict[str, dict[str, str]]) -> dict[str, str]:
    """Literal environment of a k8s container (envFrom ConfigMaps, then env values)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    env.update({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
    return env


def configmaps() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["data"] for d in k8s_kind("ConfigMap")}


def api_container() -> dict[str, Any]:
    (deployment,) = k8s_kind("Deployment")
    (container,) = containers(deployment)
    return container


def serve_port() -> int:
    """The serve subcommand's default port: its argparse default, else the settings' default
    (`dinoserve serve` without --port binds DINOSERVE_SERVE__PORT, default 8000), read from the
    class, not from this process's environment."""
    from dinoserve.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    if "serve" not in commands:
        return 8000  # the port the service has always documented
    port = next(a for a in commands["serve"]._actions if a.dest == "port").default
    if port is None:
        port = Settings.model_fields["serve"].annotation.model_fields["port"].default
    return port


# --- parsing --------------------------------------------------------------------------------


def test_there_are_deploy_files():
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    expected = {
        "compose.yaml",
        "k8s/api.yaml",
        "k8s/config.yaml",
        "k8s/index-job.yaml",
        "k8s/train-job.yaml",
        "k8s/qdrant-values.yaml",
    }
    assert expected <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path):
    docs = load_all(path)
    assert docs and all(isinstance(d, dict) for d in docs)
    if path.parent == K8S and path.name != "qdrant-values.yaml":
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name")


# --- settings -------------------------------------------------------------------------------


def test_settings_introspection_sees_nested_groups():
    assert {"DINOSERVE_QDRANT_URL", "DINOSERVE_QDRANT__SHARD_NUMBER"} <= VARIABLES.keys()


def test_every_dinoserve_variable_is_a_setting():
    unknown = {}
    for token, files in used_variables().items():
        known = (
            any(v.startswith(token) for v in VARIABLES)
            if token.endswith("_")
            else (token in VARIABLES)
        )
        if not known:
            unknown[token] = sorted(files)
    assert not unknown, f"not fields of core.settings.Settings: {unknown}"


def test_required_settings_are_set_everywhere_the_service_runs():
    required = {v for v, req in VARIABLES.items() if req}
    cm = configmaps()
    envs = {
        f"k8s {c['name']}": env_of(c, cm)
        for d in k8s_docs()
        for c in containers(d)
        if is_dinoserve(c["image"])
    }
    for name, service in compose()["services"].items():
        if is_dinoserve(service.get("image", "")):
            envs[f"compose {name}"] = service.get("environment") or {}
    assert envs
    for where, env in envs.items():
        assert required <= env.keys(), f"{where} lacks {sorted(required - env.keys())}"


def _validate(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for var in list(os.environ):
        if var.startswith("DINOSERVE_"):
            monkeypatch.delenv(var)
    for var, value in env.items():
        if value is not None:  # null in compose = passed through from the host
            monkeypatch.setenv(var, str(value))
    return Settings()


def test_compose_settings_validate(monkeypatch):
    for name, service in compose()["services"].items():
        if is_dinoserve(service.get("image", "")):
            settings = _validate(service.get("environment") or {}, monkeypatch)
            assert settings.qdrant_url, name  # compose always runs a server, never embedded


def test_k8s_settings_validate(monkeypatch):
    cm = configmaps()
    for doc in k8s_docs():
        for container in containers(doc):
            if is_dinoserve(container["image"]):
                settings = _validate(env_of(container, cm), monkeypatch)
                assert settings.qdrant_url, container["name"]


# --- images, port, probes -------------------------------------------------------------------


def image_refs() -> dict[str, set[str]]:
    """{image reference: where} for dinoserve and Qdrant images in deploy files and docs."""
    refs: dict[str, set[str]] = {}
    for path in [
        *YAML_FILES,
        DOCKERFILE,
        ROOT / "Makefile",
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted(DEPLOY.rglob("*.md")),
    ]:
        pattern = r"(?<![\w./-])((?:[\w.-]+/)*(?:dinoserve|qdrant/qdrant):(?:v?\d[\w.-]*|latest))"
        for ref in re.findall(pattern, path.read_text()):
            refs.setdefault(ref, set()).add(str(path.relative_to(ROOT)))
    return refs


def test_dinoserve_image_is_the_project_version_everywhere():
    refs = {r: w for r, w in image_refs().items() if is_dinoserve(r)}
    assert f"dinoserve:{VERSION}" in refs
    wrong = {
        r: sorted(w)
        for r, w in refs.items()
        if r not in (f"dinoserve:{VERSION}", f"dinoserve:{VERSION}-cpu")
    }
    assert not wrong, f"expected dinoserve:{VERSION} (or -cpu): {wrong}"
    used = {s["image"] for s in compose()["services"].values() if is_dinoserve(s.get("image", ""))}
    used |= {c["image"] for d in k8s_docs() for c in containers(d) if is_dinoserve(c["image"])}
    assert used == {f"dinoserve:{VERSION}"}


def test_one_qdrant_version_in_compose_and_helm_values():
    tags = {r.split(":", 1)[1] for r in image_refs() if r.startswith("qdrant/qdrant:")}
    for service in compose()["services"].values():
        if service.get("image", "").startswith("qdrant/qdrant"):
            tags.add(service["image"].split(":", 1)[1])
    tags.add(str(load_all(K8S / "qdrant-values.yaml")[0]["image"]["tag"]))
    assert len(tags) == 1 and re.fullmatch(r"v\d+\.\d+\.\d+", tags.pop())


def test_port_agrees_with_the_cli():
    port = serve_port()
    text = DOCKERFILE.read_text()
    assert re.search(rf"^EXPOSE {port}$", text, re.M)
    assert re.search(rf'^CMD \[.*"--port", "{port}"\]$', text, re.M)
    assert f"127.0.0.1:{port}/healthz" in text
    for name, service in compose()["services"].items():
        if is_dinoserve(service.get("image", "")):
            assert [str(p).rsplit(":", 1)[-1] for p in service["ports"]] == [str(port)], name
    api = api_container()
    assert [p["containerPort"] for p in api["ports"]] == [port]
    assert api["args"][api["args"].index("--port") + 1] == str(port)
    (deployment,) = k8s_kind("Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)


def test_probe_paths_are_served_by_the_app():
    """Asked of the app itself, before its lifespan has loaded anything: liveness answers 200,
    readiness 503 (not ready yet), and the metrics path exists."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    api = api_container()
    probes = {
        kind: api[kind]["httpGet"]["path"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    (deployment,) = k8s_kind("Deployment")
    metrics = deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    healthcheck = re.search(r"HEALTHCHECK[\s\S]*?:\d+(/\w+)'", DOCKERFILE.read_text())
    assert healthcheck
    client = TestClient(create_app(Settings()), raise_server_exceptions=False)
    for path in (probes["startupProbe"], probes["livenessProbe"], healthcheck.group(1)):
        assert client.get(path).status_code == 200, path
    assert client.get(probes["readinessProbe"]).status_code == 503
    assert client.get(metrics).status_code not in (404, 405)
    assert client.get("/no-such-route").status_code == 404  # the checks above can fail


# --- cluster sizes --------------------------------------------------------------------------


def test_compose_cluster_profile():
    services = compose()["services"]
    peers = {
        n: s
        for n, s in services.items()
        if "cluster" in s.get("profiles", []) and s.get("image", "").startswith("qdrant/qdrant")
    }
    assert len(peers) == 3
    first, *others = sorted(peers)
    assert "--bootstrap" not in peers[first]["command"]
    for name in others:
        assert f"--bootstrap http://{first}:6335" in peers[name]["command"]
    for name, peer in peers.items():
        assert f"--uri http://{name}:6335" in peer["command"]
        assert str(peer["environment"]["QDRANT__CLUSTER__ENABLED"]) == "true"
    api = next(
        s
        for s in services.values()
        if "cluster" in s.get("profiles", []) and is_dinoserve(s.get("image", ""))
    )
    env = api["environment"]
    assert env["DINOSERVE_QDRANT_URL"].startswith(f"http://{first}:")
    replicas = int(env["DINOSERVE_QDRANT__REPLICATION_FACTOR"])
    assert 1 < replicas <= len(peers)
    assert int(env["DINOSERVE_QDRANT__WRITE_CONSISTENCY_FACTOR"]) <= replicas
    assert int(env["DINOSERVE_QDRANT__SHARD_NUMBER"]) % len(peers) == 0


def test_k8s_collection_layout_fits_the_helm_cluster():
    values = load_all(K8S / "qdrant-values.yaml")[0]
    env = configmaps()["dinoserve-config"]
    replicas = int(env["DINOSERVE_QDRANT__REPLICATION_FACTOR"])
    assert values["replicaCount"] == 3 and values["config"]["cluster"]["enabled"] is True
    assert 1 < replicas <= values["replicaCount"]
    assert int(env["DINOSERVE_QDRANT__WRITE_CONSISTENCY_FACTOR"]) <= replicas
    assert int(env["DINOSERVE_QDRANT__SHARD_NUMBER"]) % values["replicaCount"] == 0


def test_api_autoscaling_and_disruption_budget_target_the_deployment():
    (deployment,) = k8s_kind("Deployment")
    (hpa,) = k8s_kind("HorizontalPodAutoscaler")
    (pdb,) = k8s_kind("PodDisruptionBudget")
    (service,) = k8s_kind("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2  # one may be disrupted while another serves
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert "cpu" in api_container()["resources"]["requests"]  # the HPA's utilisation base


def test_indexer_job_shards_match_completions():
    (job,) = [j for j in k8s_kind("Job") if j["spec"].get("completionMode") == "Indexed"]
    (container,) = containers(job)
    args = container["args"]
    assert args[0] == "index"
    shard = args[args.index("--shard") + 1]
    assert shard == f"$(JOB_COMPLETION_INDEX)/{job['spec']['completions']}"
    assert "JOB_COMPLETION_INDEX" in {e["name"] for e in container["env"]}


def test_training_job_sizes_agree():
    (job,) = k8s_kind("PyTorchJob")
    specs = job["spec"]["pytorchReplicaSpecs"]
    for spec in specs.values():
        (container,) = containers(spec)
        assert container["name"] == "pytorch" and container["command"] == ["torchrun"]
        args = container["args"]
        flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        assert int(flags["nnodes"]) == sum(s["replicas"] for s in specs.values())
        assert int(flags["nproc_per_node"]) == container["resources"]["limits"]["nvidia.com/gpu"]
        assert args[args.index("-m") + 1 : args.index("-m") + 3] == ["dinoserve", "train"]
        config = args[args.index("--config") + 1]
        assert (ROOT / config).is_file()  # shipped in the image's working directory
        assert re.search(r"^COPY configs \./configs$", DOCKERFILE.read_text(), re.M)


# --- Dockerfile lint ------------------------------------------------------------------------


def _tool(name: str) -> str:
    """A linter from the dev extras: next to this Python, or on PATH."""
    found = Path(sys.executable).with_name(name)
    path = str(found) if found.exists() else shutil.which(name)
    assert path, f"{name} missing: `make test` installs it with the dev extras"
    return path


def test_dockerfile_lint():
    hadolint = _tool("hadolint")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


REQUIRED_KEYS = ("DINOSERVE_API_KEY", "DINOSERVE_ADMIN_API_KEY")


def _compose_config(profile: list[str], **keys: str) -> subprocess.CompletedProcess:
    """`docker-compose config -q` with exactly these DINOSERVE_* variables in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINOSERVE_")} | keys
    cmd = [_tool("docker-compose"), "-f", str(DEPLOY / "compose.yaml"), *profile, "config", "-q"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


@pytest.mark.parametrize("profile", [[], ["--profile", "cluster"]], ids=["default", "cluster"])
def test_compose_config_is_valid_with_the_keys(profile):
    proc = _compose_config(profile, **{k: "secret" for k in REQUIRED_KEYS})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("missing", REQUIRED_KEYS)
def test_compose_refuses_to_run_without_the_keys(missing):
    """The API publishes its port on every interface: no key, no service (the message names
    the variable and where to read on)."""
    for given in ({}, {missing: ""}):  # unset, or set empty
        keys = {k: "secret" for k in REQUIRED_KEYS if k != missing} | given
        proc = _compose_config([], **keys)
        assert proc.returncode != 0
        assert f"required variable {missing} is missing a value" in proc.stderr, proc.stderr
        assert "docs/operations.md" in proc.stderr


def test_k8s_api_takes_its_keys_from_a_named_secret():
    """Required keys (no `optional`): a pod without them would not start off the loopback."""
    env = {e["name"]: e for e in api_container()["env"]}
    for var in REQUIRED_KEYS:
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "dinoserve-secrets" and ref["key"]
        assert not ref.get("optional", False), var
    assert "dinoserve-secrets" in (K8S / "README.md").read_text()  # how to create it


def test_the_deployed_api_binds_off_the_loopback_with_keys(monkeypatch):
    """The image and the manifests bind 0.0.0.0; with their keys the start check passes."""
    from api.access import check_exposure, is_loopback

    assert re.search(r'^CMD \[.*"--host", "0\.0\.0\.0"', DOCKERFILE.read_text(), re.M)
    args = api_container()["args"]
    assert not is_loopback(args[args.index("--host") + 1])
    from fastapi.testclient import TestClient

    from api.main import create_app

    env = env_of(api_container(), configmaps()) | {k: "from-the-secret" for k in REQUIRED_KEYS}
    env["DINOSERVE_SERVE__HOST"] = "0.0.0.0"  # the image's ENV
    settings = _validate(env, monkeypatch)
    check_exposure(settings, warn=False)
    # The image's health check sends no key, and needs none.
    healthcheck = re.search(r"HEALTHCHECK[\s\S]*?:\d+(/\w+)'", DOCKERFILE.read_text())
    assert healthcheck
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    assert client.get(healthcheck.group(1)).status_code == 200
    assert client.get("/model").status_code == 401  # while the rest needs the key
    for name, service in compose()["services"].items():
        if is_dinoserve(service.get("image", "")):
            values = service["environment"]
            assert all(str(values[k]).startswith(f"${{{k}:?") for k in REQUIRED_KEYS), name


def test_api_drains_within_the_kill_deadline(monkeypatch):
    """preStop sleep + the service's graceful drain must end before Kubernetes kills the pod."""
    (deployment,) = k8s_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = api_container()
    settings = _validate(env_of(container, configmaps()), monkeypatch)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = int(pre_stop[1]) + settings.serve.graceful_shutdown_s
    assert drain < pod["terminationGracePeriodSeconds"]


# --- uploaded images (DINOSERVE_BLOB_DIR) ----------------------------------------------------


def test_the_blob_dir_is_a_shared_volume_wherever_the_api_writes_it(monkeypatch):
    """Every API replica writes uploads there and every replica (thumbnails, refresh) and the
    indexer read them: a volume that outlives the pods, shared by all (ReadWriteMany)."""
    cm = configmaps()
    claims = {d["metadata"]["name"]: d for d in k8s_kind("PersistentVolumeClaim")}
    checked = []
    for doc in k8s_kind("Deployment") + k8s_kind("Job"):
        pod = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in containers(doc):
            if not is_dinoserve(c["image"]) or "train" in c["name"]:
                continue
            blob_dir = str(_validate(env_of(c, cm), monkeypatch).blob_dir)
            mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == blob_dir), None)
            assert mount is not None, f"{c['name']} does not mount {blob_dir}"
            claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
            assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"]
            if doc["kind"] == "Deployment":
                assert not mount.get("readOnly"), "the API writes uploads"
            checked.append(doc["kind"])
    assert {"Deployment", "Job"} <= set(checked)
    for name, service in compose()["services"].items():
        if is_dinoserve(service.get("image", "")):
            blob_dir = str(_validate(service.get("environment") or {}, monkeypatch).blob_dir)
            mounts = [v for v in service.get("volumes", []) if v.split(":")[1] == blob_dir]
            assert mounts and mounts[0].split(":")[0] in compose()["volumes"], name
