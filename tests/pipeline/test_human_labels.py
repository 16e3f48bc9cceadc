"""From the pipeline's models to a labelling queue, labels posted to the real server, and `dvc repro` retraining
the reward model on them (smoke profile, real DVC in a throwaway git repo)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tasks.labelling.store import read_labels, read_queue
from tests.pipeline.smoke_project import background, copy_project, free_port, project_env, run, stages_run, wait_healthy

pytestmark = pytest.mark.integration


def _post_label(url: str, body: dict) -> int:
    request = urllib.request.Request(
        f"{url}api/labels", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def _next(url: str, session: str) -> dict:
    with urllib.request.urlopen(f"{url}api/next?session={session}", timeout=10) as response:
        return json.loads(response.read())


def test_a_batch_of_labels_makes_dvc_repro_retrain_the_reward_model_on_them(tmp_path):
    project = copy_project(tmp_path / "project")
    env = project_env(project)
    assert run(["dvc", "repro"], project, env, timeout=900).returncode == 0
    before = json.loads((project / "metrics/reward.json").read_text())
    assert before["reward/human_pairs"] == 0

    built = run(["rlhf", "label", "queue", "--count", "4"], project, env)
    assert built.returncode == 0 and "4 new pairs" in built.stdout
    assert "0 new pairs" in run(["rlhf", "label", "queue", "--count", "4"], project, env).stdout  # nothing twice
    pairs = read_queue(project / "data/human/queue.jsonl")
    assert len(pairs) == 4
    assert all(p.model_a.startswith("models/sft@") and p.model_b.startswith("models/ppo@") for p in pairs)
    assert run(["dvc", "status", "reward"], project, env).stdout.strip().endswith("up to date.")

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = ["rlhf", "label", "serve", "--port", str(port)]
    with background(command, project, env, tmp_path / "label.log") as server:
        wait_healthy(url, server, tmp_path / "label.log")
        for side in ("left", "right", "tie", "skip"):
            shown = _next(url, "s1")["item"]
            body = {"pair_id": shown["pair_id"], "session": "s1", "labeller": "ada", "order": shown["order"]}
            assert _post_label(url, body | {"choice": side}) == 201
        assert _next(url, "s1") == {"item": None, "progress": {"labelled": 4, "total": 4}}
    assert len(read_labels(project / "data/human/preferences.jsonl")) == 4

    status = run(["dvc", "status", "reward"], project, env)
    assert "data/human/preferences.jsonl" in status.stdout  # the new labels make the reward stage stale
    repro = run(["dvc", "repro"], project, env, timeout=900)
    assert repro.returncode == 0
    assert {"reward", "ppo", "evaluate"} <= stages_run(repro.stdout)
    after = json.loads((project / "metrics/reward.json").read_text())
    assert after["reward/human_pairs"] == 2  # A and B picks; the tie and the skip carry no preference
    assert after["reward/resumed_from_step"] == 0  # new inputs: trained afresh, not resumed
