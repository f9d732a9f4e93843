"""Kubernetes manifests and the Compose file, checked offline.

The manifests are validated against the Kubernetes OpenAPI schemas that the
kubernetes-validate package ships (no cluster, no network), in strict mode
(unknown fields are errors), for the oldest version the manifests need (gRPC
probes are GA in 1.27) and the newest the package knows. Then what schemas
cannot see: every node the scenario names has a Service and a StatefulSet
whose flags model the very device the scenario describes, and the Compose
file agrees with both.
"""

from __future__ import annotations

import copy
import re
import tomllib
import zlib
from typing import Any

import pytest

from deploy_helpers import REPO, in_ci
from tiersim.orchestrator.scenario import loads_scenario

K8S = REPO / "deploy" / "k8s"
DOCKER = REPO / "deploy" / "docker"
TOKEN = "/run/secrets/tiersim-token"

yaml = pytest.importorskip("yaml", reason="PyYAML is a dev dependency")


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        if in_ci():
            pytest.fail("kubernetes-validate is not installed (a dev dependency)")
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return kubernetes_validate


def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in manifests() if d["kind"] == kind}


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("version", ["1.27.0", "latest"])
def test_manifests_validate_against_kubernetes_schemas(version: str) -> None:
    kv = _kubernetes_validate()
    if version == "latest":
        version = kv.latest_version()
    docs = manifests()
    assert {d["kind"] for d in docs} == {"Namespace", "ConfigMap", "Service", "StatefulSet", "Job"}
    for doc in docs:
        kv.validate(doc, version, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    """A control: the schemas are really applied (a typo and a wrong type are caught)."""
    kv = _kubernetes_validate()
    sts = copy.deepcopy(by_kind("StatefulSet")["cram0"])
    sts["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["prot"] = 50051
    with pytest.raises(kv.ValidationError):
        kv.validate(sts, "1.27.0", strict=True)
    sts = copy.deepcopy(by_kind("StatefulSet")["cram0"])
    sts["spec"]["replicas"] = "one"
    with pytest.raises(kv.ValidationError):
        kv.validate(sts, "1.27.0", strict=True)


def _container(sts: dict[str, Any]) -> dict[str, Any]:
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _flags(args: list[str]) -> dict[str, str]:
    assert args[0] == "node"
    it = iter(args[1:])
    return {k.removeprefix("--"): v for k, v in zip(it, it, strict=True)}


def _scenario(text: str) -> Any:
    sc = loads_scenario(text, source="scenario.toml")
    assert len(sc.variants) == 1
    return sc.variants[0]


def _check_node_flags(run: Any, name: str, flags: dict[str, str]) -> None:
    """The node process models exactly the device the scenario's [[nodes]] entry describes."""
    from tiersim._units import parse_size

    node = next(n for n in run.nodes if n.name == name)
    assert flags["name"] == name
    assert flags["kind"] == {"storage": "storage"}.get(node.kind, node.kind)
    assert parse_size(flags["advertised"]) == node.advertised_bytes
    if node.kind == "cram":
        assert parse_size(flags["physical"]) == node.physical_bytes
    assert int(flags["seed"]) == zlib.crc32(f"{run.seed}:{name}".encode())
    assert node.address == f"{name}:{flags['port']}"
    assert flags["host"] == "0.0.0.0"
    # Beyond loopback the node demands a token; the orchestrator reads the same file.
    assert flags["token-file"] == node.token_file == TOKEN


def _mounts_token(pod: dict[str, Any], container: dict[str, Any]) -> None:
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == TOKEN)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "tiersim-node-token"
    assert mount["subPath"] in {"token"} and mount["readOnly"] is True
    # The secret file is group-readable; fsGroup makes the pod's user a member.
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]


def test_statefulsets_probes_resources_and_security() -> None:
    services = by_kind("Service")
    for name, sts in by_kind("StatefulSet").items():
        assert sts["spec"]["replicas"] == 1
        assert services[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
        c = _container(sts)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == 50051, (name, probe)
        assert {"cpu", "memory"} <= set(c["resources"]["requests"])
        assert "memory" in c["resources"]["limits"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        _mounts_token(sts["spec"]["template"]["spec"], c)
        assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        # The pod labels select it into its own Service.
        svc = services[name]
        labels = sts["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())


def test_configmap_scenario_matches_the_nodes_and_compose() -> None:
    text = by_kind("ConfigMap")["tiersim-scenario"]["data"]["scenario.toml"]
    # One scenario text for Compose, Swarm and Kubernetes.
    assert text == (DOCKER / "scenario.toml").read_text()
    run = _scenario(text)
    names = {n.name for n in run.nodes}
    sts = by_kind("StatefulSet")
    assert set(sts) == names
    assert names <= set(by_kind("Service"))
    for name in names:
        _check_node_flags(run, name, _flags(_container(sts[name])["args"]))


def test_job_waits_for_every_node_and_mounts_the_scenario() -> None:
    job = by_kind("Job")["tiersim-orchestrator"]
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    wait = spec["initContainers"][0]["args"]
    run = _scenario((DOCKER / "scenario.toml").read_text())
    assert "health" in wait and "--wait" in wait
    assert {n.address for n in run.nodes} <= set(wait)
    main = spec["containers"][0]
    assert "/etc/tiersim/scenario.toml" in " ".join(main["args"])
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/etc/tiersim"]]["configMap"]["name"] == "tiersim-scenario"
    assert "/tmp" in mounts  # results are written there under a read-only root
    _mounts_token(spec, main)


def test_compose_file_is_one_for_compose_and_swarm() -> None:
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert str(doc["version"]).startswith("3")
    services = doc["services"]
    run = _scenario((DOCKER / "scenario.toml").read_text())
    assert set(services) == {n.name for n in run.nodes} | {"orchestrator"}
    kinds = set()
    for n in run.nodes:
        svc = services[n.name]
        assert "build" not in svc  # docker stack deploy takes images only
        _check_node_flags(run, n.name, _flags(svc["command"]))
        assert svc["healthcheck"]["test"][0] == "CMD"
        assert svc["deploy"]["endpoint_mode"] == "dnsrr"
        assert svc["secrets"] == ["tiersim-token"]
        kinds.add(n.kind)
    assert kinds == {"dram", "cram", "storage"}
    orch = services["orchestrator"]
    assert orch["deploy"]["restart_policy"]["condition"] == "none"  # a job
    assert orch["healthcheck"]["disable"] is True
    assert isinstance(orch["depends_on"], list)  # the only form Swarm's schema takes
    script = " ".join(orch["command"])
    assert all(f"{n.name}:50051" in script for n in run.nodes)
    assert orch["configs"][0]["target"] == "/etc/tiersim/scenario.toml"
    assert orch["secrets"] == ["tiersim-token"]  # mounted at /run/secrets/tiersim-token
    assert doc["secrets"]["tiersim-token"]["file"].startswith("${TIERSIM_TOKEN_FILE")
    assert doc["configs"]["scenario"]["file"] == "./scenario.toml"
    v1 = yaml.safe_load((DOCKER / "compose.v1.yaml").read_text())
    assert v1["services"]["orchestrator"]["volumes"] == [
        "./scenario.toml:/etc/tiersim/scenario.toml:ro"
    ]


def test_dockerfile_rules() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines()]
    assert "ARG BASE_IMAGE=python:3.11-slim" in lines
    assert "FROM ${BASE_IMAGE}" in lines
    entry = next(ln for ln in lines if ln.startswith("ENTRYPOINT"))
    assert entry == 'ENTRYPOINT ["tiersim"]'  # exec form
    assert any(ln.startswith("USER 10001") for ln in lines)
    assert "HEALTHCHECK" in text and "grpc_health" in text
    assert "--no-index" in text  # the offline build
    ignore = (DOCKER / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :] == ["*", "!Dockerfile", "!wheels/*.whl"]


def test_shell_scripts_pass_shellcheck() -> None:
    import shutil
    import subprocess

    scripts = [REPO / "deploy" / "ci-containers.sh", *(REPO / "deploy" / "netns").glob("*.sh")]
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    done = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_docs_commands_are_the_cli() -> None:
    """Every `tiersim cluster ACTION` the READMEs show is a real action."""
    from tiersim.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    cluster = sub.choices["cluster"]
    actions = set(next(a for a in cluster._actions if a.dest == "cluster_command").choices)
    for readme in (REPO / "deploy" / "README.md", K8S / "README.md"):
        used = re.findall(r"tiersim cluster ([a-z]+)", readme.read_text())
        assert set(used) <= actions, f"{readme.name}: {sorted(set(used) - actions)}"
    assert {"start", "status", "stop", "fault", "scenario", "logs"} <= set(
        re.findall(r"tiersim cluster ([a-z]+)", (REPO / "deploy" / "README.md").read_text())
    )


def test_cluster_file_examples_match_the_default_scenario() -> None:
    """deploy/clusters/*.toml claim the default scenario's devices: check the claim."""
    from tiersim.orchestrator.launcher import cluster_from_scenario, load_cluster

    want = {n.name: n.device_settings() for n in cluster_from_scenario("default").nodes}
    for f in (REPO / "deploy" / "clusters").glob("*.toml"):
        spec = load_cluster(f)
        assert {n.name: n.device_settings() for n in spec.nodes} == want, f.name
    assert tomllib.loads((REPO / "deploy" / "clusters" / "netns3.toml").read_text())
