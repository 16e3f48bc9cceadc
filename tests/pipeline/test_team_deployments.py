"""Prefect beyond one process: the docker and kubernetes deployments in prefect.yaml, deployed to a real server.

No docker daemon or cluster runs here; what a team's worker would receive is checked instead: the deployments
the server stored and the Kubernetes Job manifest their job variables render to through the pool's template.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
from prefect.utilities.templating import apply_values

from tests.pipeline.smoke_project import (
    BIN_DIR,
    REPO_ROOT,
    background,
    copy_project,
    free_port,
    project_env,
    run,
    wait_healthy,
)

pytestmark = pytest.mark.integration
TRACKING_URI = "http://mlflow.team.example:5000"


def _post(api: str, path: str, body: dict) -> list | dict:
    request = urllib.request.Request(
        f"{api}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _get(api: str, path: str) -> dict:
    with urllib.request.urlopen(f"{api}{path}", timeout=30) as response:
        return json.loads(response.read())


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run([BIN_DIR / "hadolint", "Dockerfile"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prefect_deploy_accepts_the_docker_and_kubernetes_deployments(tmp_path):
    project = copy_project(tmp_path / "project")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = project_env(project, PREFECT_API_URL=api, MLFLOW_TRACKING_URI=TRACKING_URI)
    server_command = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with background(server_command, project, env, project / "server.log") as server:
        wait_healthy(f"{api}/health", server, project / "server.log")
        k8s_template = "configs/prefect/kubernetes-gpu-job-template.json"
        for pool in (
            ["rlhf-docker", "--type", "docker"],
            ["rlhf-k8s", "--type", "kubernetes", "--base-job-template", k8s_template],
        ):
            assert run(["prefect", "work-pool", "create", *pool], project, env).returncode == 0
        for name in ("docker", "kubernetes"):
            assert run(["prefect", "--no-prompt", "deploy", "--name", name], project, env).returncode == 0

        stored = {d["name"]: d for d in _post(api, "/deployments/filter", {})}
        assert set(stored) == {"docker", "kubernetes"}
        for deployment in stored.values():
            assert deployment["entrypoint"] == "flows/pipeline.py:rlhf_pipeline"
            assert deployment["pull_steps"] == [
                {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/rlhf"}}
            ]
            # The tracking URI in the deployer's environment, not the literal template
            assert deployment["job_variables"]["env"] == {"MLFLOW_TRACKING_URI": TRACKING_URI}
        assert stored["docker"]["work_pool_name"] == "rlhf-docker"
        assert stored["docker"]["job_variables"]["image"] == "rlhf-pipeline:latest"

        # What the kubernetes worker would submit: the pool's template with the deployment's job variables.
        pool = _get(api, "/work_pools/rlhf-k8s")
        template = pool["base_job_template"]
        values = {key: spec.get("default") for key, spec in template["variables"]["properties"].items()}
        values |= stored["kubernetes"]["job_variables"]
        manifest = apply_values(template["job_configuration"], values)["job_manifest"]
        container = manifest["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["resources"]["requests"]["memory"] == "16Gi"
        assert container["image"] == "rlhf-pipeline:gpu"
        assert container["env"] == {"MLFLOW_TRACKING_URI": TRACKING_URI}

        # The server checks job variables against the pool's template: a negative GPU count is refused.
        # (key=value gives a string; a JSON object keeps the number.)
        overrides = ["--job-variable", json.dumps({"gpu_limit": -1})]
        refused = run(["prefect", "--no-prompt", "deploy", "--name", "kubernetes", *overrides], project, env)
        assert refused.returncode != 0
        assert "-1 is less than the minimum of 0" in refused.stdout + refused.stderr
        kept = _get(api, f"/deployments/{stored['kubernetes']['id']}")
        assert kept["job_variables"]["gpu_limit"] == 1
