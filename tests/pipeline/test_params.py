"""params.yaml: the shipped file is valid; bad keys fail naming the key before any stage work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_lib.config import ConfigError
from tasks.evaluate import distinct_n
from tasks.params import checkpoint_dir, load_params

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.ppo_config().batch_size % params.ppo_config().num_mini_batches == 0
    assert params.policy.gguf_file.endswith(".gguf")


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


def test_distinct_n():
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a b c", "d e f"], 2) == 1.0
    assert distinct_n([""], 2) == 0.0


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
