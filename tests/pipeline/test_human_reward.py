"""The `human` reward source: a short PPO run (smoke profile) that waits for ratings a scripted browser gives on the
real rating page; a timeout stops it with a checkpoint; a killed and restarted run asks for no rating twice."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import yaml

from tasks.labelling.store import read_labels
from tests.pipeline.smoke_project import BIN_DIR, copy_project, project_env, run
from tests.pipeline.test_labelling import CHROMIUM, CHROMIUM_ARGS, LabelServer

pytestmark = pytest.mark.integration
HUMAN = {"name": "people", "kind": "human", "weight": 1.0}


def _use_human_reward(project, timeout_s: float) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["reward_sources"] = [HUMAN | {"timeout_s": timeout_s}]
    params["ppo"]["eval_steps"] = None
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _ppo(project, env) -> subprocess.Popen:
    command = [str(BIN_DIR / "rlhf"), "stage", "ppo", "--no-tracking"]
    return subprocess.Popen(
        command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )


def _rating_for(response: str) -> str:
    """The scripted rater's taste: longer responses are better."""
    return str(min(5, 1 + len(response) // 8))


def _rate_while(page, process: subprocess.Popen, seen: list[str], stop_after: int | None = None) -> None:
    """Rate what the page shows until `process` ends (or `stop_after` ratings in all); each shown item recorded."""
    while process.poll() is None and (stop_after is None or len(seen) < stop_after):
        try:
            page.wait_for_selector("#buttons button:not([disabled])", timeout=1000)
        except Exception:  # nothing to rate yet: PPO is sampling its next batch
            continue
        before = page.text_content("#progress-text")
        response = page.text_content("#text")
        seen.append(page.text_content("#prompt") + "\x00" + response)
        page.keyboard.press(_rating_for(response))
        page.wait_for_function("t => document.getElementById('progress-text').textContent !== t", arg=before)


def test_ppo_waits_for_people_stops_on_timeout_and_resumes_without_asking_twice(tmp_path):
    project = copy_project(tmp_path / "project")
    env = project_env(project)
    for stage in ("params", "prepare", "validate", "sft"):
        assert run(["rlhf", "stage", stage, "--no-tracking"], project, env).returncode == 0

    # Nobody rates: the stage stops after the timeout, naming it, with a checkpoint to resume from.
    _use_human_reward(project, timeout_s=3)
    alone = run(["rlhf", "stage", "ppo", "--no-tracking"], project, env, timeout=300)
    assert alone.returncode == 3
    assert "people: 4 of 4 responses not rated within 3 s" in alone.stderr and "resume from" in alone.stderr
    assert list(project.glob("checkpoints/ppo/*/checkpoints/checkpoint-0"))
    assert len(read_labels(project / "data/human/rating_requests.jsonl")) == 4

    _use_human_reward(project, timeout_s=120)
    server = LabelServer(project / "data/human/queue.jsonl", project / "data/human/preferences.jsonl")
    server.start()
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(server.url + "rate")
            page.fill("#rater", "ada")
            page.press("#rater", "Enter")
            seen: list[str] = []
            first = _ppo(project, env)
            _rate_while(page, first, seen, stop_after=9)  # steps 1-2 rated (checkpoint-2), one of step 3's
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
            rated_before_kill = len(read_labels(project / "data/human/ratings.jsonl"))
            assert rated_before_kill == 9

            second = _ppo(project, env)
            _rate_while(page, second, seen)
            output = second.communicate(timeout=300)[0].decode()
            browser.close()
    finally:
        server.kill()
    assert second.returncode == 0, output
    assert len(seen) == len(set(seen)) == 16  # 4 steps x 4 responses, each shown once, none asked for twice
    ratings = read_labels(project / "data/human/ratings.jsonl")
    assert len(ratings) == 16 and len({row["item_id"] for row in ratings}) == 16
    assert all(row["rater"] == "ada" and row["rating"] == int(_rating_for(row["response"])) for row in ratings)
    requests = read_labels(project / "data/human/rating_requests.jsonl")
    assert len(requests) == len({row["item_id"] for row in requests}) == 16
    assert (project / "models/ppo/config.json").is_file()
