"""The container cluster for real: Compose and Swarm, a scenario across containers.

The engine, base image and tiersim's image are prepared by
`deploy/ci-containers.sh prepare` (CI runs it before the tests); each test
here brings a cluster up, runs the orchestrator job, checks its results
against the embedded run, and takes the cluster down. Without a Docker
engine or the image these tests skip on a developer's machine, saying why,
and fail in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import tiersim
from deploy_helpers import REPO, require

pytestmark = pytest.mark.slow

SCRIPT = REPO / "deploy" / "ci-containers.sh"
IMAGE = os.environ.get("TIERSIM_IMAGE", f"tiersim:{tiersim.__version__}")


def _docker_ready() -> str | None:
    if shutil.which("docker") is None:
        return "the docker command is not installed (deploy/ci-containers.sh prepare installs it)"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        return "no Docker engine is running (deploy/ci-containers.sh prepare starts one)"
    image = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, timeout=30)
    if image.returncode != 0:
        return f"image {IMAGE} is not built (deploy/ci-containers.sh prepare builds it)"
    return None


@pytest.fixture(scope="module")
def docker() -> None:
    why = _docker_ready()
    require(why is None, why or "")


def _stage(stage: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHON=sys.executable, TIERSIM_IMAGE=IMAGE)
    return subprocess.run(
        ["bash", str(SCRIPT), stage], capture_output=True, text=True, timeout=900, env=env
    )


def _assert_passed(done: subprocess.CompletedProcess[str]) -> None:
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "check_results: equal to the embedded run" in out


def test_compose_cluster_runs_the_scenario(docker: None) -> None:
    done = _stage("compose")
    _assert_passed(done)
    assert "nodes healthy by the image's HEALTHCHECK" in done.stderr
    assert "compose: cluster down" in done.stderr


def test_swarm_stack_runs_the_scenario(docker: None) -> None:
    done = _stage("swarm")
    _assert_passed(done)
    assert "swarm: stack removed" in done.stderr
    leftovers = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=com.docker.stack.namespace=tiersimci"],
        capture_output=True,
        text=True,
    ).stdout
    assert leftovers.strip() == ""
