"""`rlhf stage` in several processes: the launcher's command line and the workers' exit code reaching the parent.
(The launch itself runs in the `custom` recipe's smoke test, whose PPO stage runs in 2 processes.)"""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.launch import EXIT_CODE_FILE, launch_command, processes_for, run_launched
from tasks.params import params_from_text

ROOT = Path(__file__).resolve().parents[2]


def _params(launch: str):
    return params_from_text((ROOT / "params.yaml").read_text().split("\nlaunch:")[0] + f"\nlaunch: {launch}\n")


def test_the_command_launches_the_stage_with_the_params_process_count():
    params = _params("{num_processes: 2, stages: [ppo]}")
    command = launch_command("ppo", params, ROOT / "params.yaml", tracking=False)
    assert command[1:3] == ["launch", "--multi_gpu"] and "--num_processes=2" in command
    assert command[command.index("-m") :] == [
        "-m",
        "tasks.cli",
        "stage",
        "ppo",
        "--params",
        str(ROOT / "params.yaml"),
        "--no-tracking",
    ]
    assert processes_for("ppo", params) == 2 and processes_for("sft", params) == 1

    sharded = _params("{num_processes: 4, config_file: configs/accelerate/fsdp.yaml}")
    command = launch_command("sft", sharded, ROOT / "params.yaml", tracking=True)
    assert command[2:4] == ["--config_file", "configs/accelerate/fsdp.yaml"] and "--multi_gpu" not in command
    assert "--num_processes=4" in command and "--no-tracking" not in command


def test_the_parent_exits_with_the_workers_code(tmp_path):
    exit_file = tmp_path / "stage.exit"
    leave = f"import os, sys; open(os.environ['{EXIT_CODE_FILE}'], 'w').write('3'); sys.exit(1)"
    assert run_launched([sys.executable, "-c", leave], exit_file) == 3  # a worker's code, not torchrun's 1
    assert run_launched([sys.executable, "-c", "import sys; sys.exit(1)"], exit_file) == 1  # none left: stale one gone
    assert run_launched([sys.executable, "-c", "pass"], exit_file) == 0
