"""A person's approval before promotion: a flow run pauses on a real Prefect server and is resumed through the
Prefect API (approve, reject) or left to time out; the answers land in a real MLflow registry (SQLite)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from mlflow import MlflowClient

from tasks import registry
from tests.pipeline.smoke_project import REPO_ROOT, background, copy_project, free_port, project_env, wait_healthy

pytestmark = pytest.mark.integration
NAME = "rlhf-policy"
GATE_FLOW = """
import sys
from prefect import flow
from flows.approval import await_approval
from tasks.tracking import configure

@flow(name="approval-gate")
def gate(version: str, timeout_s: int):
    configure("approval-test")
    return await_approval("rlhf-policy", version, "| judge | SFT 0.50 | PPO 0.70 |", timeout_s)

print("ANSWER", gate(sys.argv[1], int(sys.argv[2])))
"""


@pytest.fixture
def client(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def _candidate(
    client: MlflowClient, tmp_path, needs_approval: bool, judge_score: float = 0.7
) -> tuple[str, registry.Promotion]:
    """A new version that the promotion rule would make champion (it beats SFT and any champion so far)."""
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    (tmp_path / "model").mkdir(exist_ok=True)
    version = str(client.create_model_version(NAME, source=str(tmp_path / "model")).version)
    metrics = {registry.JUDGE_METRIC: judge_score, registry.KL_METRIC: 1.0, registry.CI_LOW_METRIC: 0.05}
    return version, registry.promote_candidate(NAME, version, metrics, 5.0, "judge", needs_approval)


def test_with_approval_on_a_candidate_the_rule_would_promote_waits_as_pending(client, tmp_path):
    version, decision = _candidate(client, tmp_path, needs_approval=True)
    assert not decision.promoted and "awaits a person's approval" in decision.reason
    assert _aliases(client) == {"candidate": version}
    assert registry.pending_approval(NAME) == version
    registry.settle_approval(NAME, version, False, "by ada: too terse")
    assert registry.pending_approval(NAME) is None
    promoted_version, promoted = _candidate(client, tmp_path, needs_approval=False)  # the gate off: as before
    assert promoted.promoted and _aliases(client)["champion"] == promoted_version


def _aliases(client: MlflowClient) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(NAME).aliases.items()}


def _api(api: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{api}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else None


def _paused_run(api: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _api(api, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}})
        if runs:
            return runs[0]["id"]
        time.sleep(0.5)
    raise TimeoutError("no flow run paused")


def test_the_flow_pauses_for_approval_and_the_answer_given_through_the_api_decides(client, tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = project_env(tmp_path, PREFECT_API_URL=api, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    env["PYTHONPATH"] = str(REPO_ROOT)
    server_command = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with background(server_command, tmp_path, env, tmp_path / "server.log") as server:
        wait_healthy(f"{api}/health", server, tmp_path / "server.log")

        def gate(version: str, timeout_s: int, answer: dict | None) -> str:
            command = [sys.executable, "-c", GATE_FLOW, version, str(timeout_s)]
            process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if answer is not None:
                run_id = _paused_run(api)
                _api(api, f"/flow_runs/{run_id}/resume", {"run_input": answer})
            output = process.communicate(timeout=300)[0].decode()
            assert process.returncode == 0, output
            return output

        approved, _ = _candidate(client, tmp_path, needs_approval=True)
        output = gate(approved, 300, {"approve": True, "reviewer": "ada", "reason": "reads well"})
        assert "ANSWER True" in output
        assert _aliases(client) == {"candidate": approved, "champion": approved}
        assert client.get_model_version(NAME, approved).tags["approval"] == "approved: by ada: reads well"

        rejected, _ = _candidate(client, tmp_path, needs_approval=True, judge_score=0.8)
        assert rejected != approved
        output = gate(rejected, 300, {"approve": False, "reviewer": "bob", "reason": "repetitive"})
        assert "ANSWER False" in output
        assert _aliases(client) == {"candidate": rejected, "champion": approved}
        assert client.get_model_version(NAME, rejected).tags["approval"] == "rejected: by bob: repetitive"

        unanswered, _ = _candidate(client, tmp_path, needs_approval=True, judge_score=0.9)
        output = gate(unanswered, 4, None)
        assert "ANSWER None" in output
        assert _aliases(client)["champion"] == approved
        assert client.get_model_version(NAME, unanswered).tags["approval"].startswith("no answer: none within 4 s")


def test_a_pipeline_flow_run_with_approval_on_pauses_for_the_pending_candidate(tmp_path):
    project = copy_project(tmp_path / "project")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = project_env(project, PREFECT_API_URL=api)
    uri = f"sqlite:///{project}/mlflow.db"  # the project's own store, which the stages log to
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = yaml.safe_load((project / "params.yaml").read_text())["tracking"]["policy_model_name"]
    # Whether this run's candidate passes the promotion rule depends on the tiny models; an earlier version left
    # pending makes sure there is one to ask about (the flow asks about the newest pending version).
    client.create_registered_model(name)
    (project / "earlier").mkdir()
    earlier = client.create_model_version(name, source=str(project / "earlier")).version
    client.set_model_version_tag(name, str(earlier), registry.APPROVAL_TAG, registry.PENDING)

    flow = [sys.executable, "-c", FLOW_RUN]
    server_command = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with background(server_command, project, env, project / "server.log") as server:
        wait_healthy(f"{api}/health", server, project / "server.log")
        process = subprocess.Popen(flow, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        run_id = _paused_run(api, timeout=600)
        _api(api, f"/flow_runs/{run_id}/resume", {"run_input": {"approve": True, "reviewer": "ada"}})
        output = process.communicate(timeout=300)[0].decode()
    assert process.returncode == 0, output
    assert "'approval': 'approved'" in output
    approved = [
        v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get("approval") == "approved: by ada"
    ]
    assert len(approved) == 1
    assert str(client.get_registered_model(name).aliases["champion"]) == str(approved[0].version)


FLOW_RUN = """
from flows.pipeline import rlhf_pipeline
print(rlhf_pipeline(overrides={"tracking.approval": True, "tracking.approval_timeout_s": 300}, experiment="gated"))
"""
