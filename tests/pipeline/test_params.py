"""params.yaml: the shipped file is valid; bad keys fail naming the key before any stage work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_lib.config import ConfigError
from tasks.params import checkpoint_dir, load_params

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.ppo.batch_size % params.ppo.num_mini_batches == 0
    assert params.policy.gguf_file.endswith(".gguf")


def test_trainer_sections_are_typed_and_take_the_global_seed_unless_they_set_their_own(tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["seed"], data["judge"]["seed"] = 7, 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    params = load_params(tmp_path / "params.yaml")
    assert (params.sft.seed, params.reward.seed, params.ppo.seed, params.judge.seed) == (7, 7, 7, 3)
    assert params.sft.output_dir == "checkpoints/sft" and params.ppo.learning_rate == data["ppo"]["learning_rate"]


def test_reward_sources_and_judges_are_checked_before_any_work(tmp_path):
    def load_with(**changes):
        data = yaml.safe_load((ROOT / "params.yaml").read_text()) | changes
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
        return load_params(tmp_path / "params.yaml")

    fn = {"name": "f", "kind": "function", "function": "recipes.sentiment.judges:vader"}
    params = load_with(reward_sources=[fn | {"weight": 0.5}])
    assert not params.trains_reward_model() and params.reward_sources[0].weight == 0.5
    relative = load_with(reward_sources=[{"name": "rm", "kind": "trained", "baseline_response": ""}])
    assert relative.reward_sources[0].baseline_response == ""
    cases = [
        (
            {"judges": [{"name": "j", "kind": "trained", "baseline_response": ""}]},
            "judges.0.trained.baseline_response: unknown key",
        ),
        ({"reward_sources": [fn | {"function": "recipes.sentiment.judges:nothing"}]}, "reward_sources[0].function"),
        ({"reward_sources": [fn | {"function": "no_such_pkg.mod:f"}]}, "cannot import no_such_pkg.mod"),
        ({"reward_sources": [fn, fn]}, "names must be distinct"),
        ({"reward_sources": []}, "name at least one"),
        ({"reward_sources": [{"name": "r", "kind": "reference"}]}, "reward_sources.0"),
        ({"judges": [fn | {"name": "j", "kind": "oracle"}]}, "judges.0"),
        ({"judges": [{"name": "j", "kind": "trained", "weight": 2}]}, "judges.0.trained.weight: unknown key"),
        ({"tracking": {"promotion_judge": "nobody"}}, "'nobody' is not one of the judges"),
        ({"evaluate": {"generation": {"top_k": 5}}}, "needs plain sampling"),
        (
            {
                "prepare": {
                    "sft": {"source": "s.jsonl", "format": "text"},
                    "prompts": {"source": "p.jsonl", "format": "prompt"},
                }
            },
            "prepare.preference: a reward source is `trained`, so name a source for it",
        ),
    ]
    for changes, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)) as raised:
            load_with(**changes)
        assert len(str(raised.value)) < 400  # the offending key and why, not the whole params file


def test_dvc_stages_are_the_cli_stages_and_depend_on_the_code_they_run():
    from tasks.cli import STAGES

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == STAGES
    for name, stage in stages.items():
        assert stage["cmd"] == f"rlhf stage {name}"
        code = {"params": "tasks/params.py"}.get(name, f"tasks/{name}.py")
        assert code in stage["deps"] and "tasks/params.py" in stage["deps"], name
    assert {"tasks/scoring.py", "recipes"} <= set(stages["evaluate"]["deps"]) & set(stages["ppo"]["deps"])


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("ppo", "kl_coeff"), 0.1, "ppo.kl_coeff: unknown key"),
        (("ppo", "learning_rate"), -1.0, "ppo.learning_rate"),
        (("ppo", "num_mini_batches"), 3, "divisible by num_mini_batches"),
        (("sft", "per_device_batch_size"), "eight", "sft.per_device_batch_size"),
        (("sft", "output_dir"), "elsewhere", "sft.output_dir: set by the pipeline"),
        (("policy", "lora", "rank"), 8, "policy.lora.rank: unknown key"),
        (("prepare", "ppo_prompts"), 0, "prepare.ppo_prompts"),
        (("evalute",), {}, "evalute: unknown key"),
        (("launch", "num_processes"), 0, "launch.num_processes"),
        (("launch", "stages"), ["evaluate"], "launch.stages.0"),
        (("launch", "num_processes"), 3, "launch.num_processes: ppo.batch_size"),
        (("launch", "config_file"), "no/such.yaml", "launch.config_file: no/such.yaml does not exist"),
        (
            ("launch", "config_file"),
            str(ROOT / "configs/accelerate/fsdp.yaml"),
            "launch.stages: PPO runs data parallel",
        ),
    ],
)
def test_bad_params_name_the_key(tmp_path, path, value, expected):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load_params(tmp_path / "params.yaml")


def test_cli_rejects_bad_params_before_any_work(tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["ppo"]["temprature"] = 0.7
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "stage", "sft", "--params", "params.yaml", "--no-tracking"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "ppo.temprature: unknown key" in result.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "checkpoints").exists()


def test_checkpoint_dir_changes_with_params_and_inputs(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n')
    first = checkpoint_dir("ppo", {"lr": 1}, [data])
    assert checkpoint_dir("ppo", {"lr": 1}, [data]) == first
    assert checkpoint_dir("ppo", {"lr": 2}, [data]) != first
    data.write_text('{"text": "b"}\n')
    assert checkpoint_dir("ppo", {"lr": 1}, [data]) != first


def test_a_run_s_params_are_validated_in_memory_and_params_yaml_comes_back_byte_for_byte(tmp_path, monkeypatch):
    from flows.pipeline import params_for_this_run, run_params_text

    monkeypatch.chdir(tmp_path)
    original = (ROOT / "params.yaml").read_bytes() + b"# a comment the run must not lose\n"
    (tmp_path / "params.yaml").write_bytes(original)
    with pytest.raises(ConfigError, match=r"ppo\.kl_coef"):
        run_params_text(None, {"ppo.kl_coef": -1})
    with pytest.raises(ConfigError, match="does not exist"):
        run_params_text("profiles/nope.yaml", None)
    assert run_params_text(None, None) is None
    text = run_params_text(None, {"ppo.kl_coef": 0.2})
    assert yaml.safe_load(text)["ppo"]["kl_coef"] == 0.2
    with pytest.raises(RuntimeError), params_for_this_run(text):
        assert yaml.safe_load((tmp_path / "params.yaml").read_text())["ppo"]["kl_coef"] == 0.2
        raise RuntimeError("a stage failed")
    assert (tmp_path / "params.yaml").read_bytes() == original
    assert not (tmp_path / ".params.yaml.before-run").exists()  # the backup goes once the file is restored


def test_a_broken_reward_function_fails_the_probe_naming_the_source():
    from rlhf_lib.rewards import RewardSource, WeightedReward
    from tasks.scoring import probe_reward

    reward = WeightedReward([RewardSource("ok", lambda p, r: [1.0] * len(r)), RewardSource("short", lambda p, r: [])])
    with pytest.raises(ConfigError, match="'short' returned 0 scores for 2 responses"):
        probe_reward(reward, ["the movie was", "a terrible", "unused"])
