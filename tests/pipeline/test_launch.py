"""`rlhf stage` in several processes: the launcher's command line and the workers' exit code reaching the parent.
(The launch itself runs in the `custom` recipe's smoke test, whose PPO stage runs in 2 processes.)"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tasks.launch import EXIT_CODE_FILE, launch_command, processes_for, run_launched
from tasks.params import params_from_text
from tests.pipeline.smoke_project import wait_until_gone

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
    # Precision comes from params, never from the launcher; without a config file, a free port on this machine.
    assert "--mixed_precision=no" in command and any(arg.startswith("--main_process_port=") for arg in command)

    fsdp = str(ROOT / "configs/accelerate/fsdp.yaml")
    sharded = _params(f"{{num_processes: 4, config_file: {fsdp}, stages: [sft, reward]}}")
    command = launch_command("sft", sharded, ROOT / "params.yaml", tracking=True)
    assert command[2:4] == ["--config_file", fsdp] and "--multi_gpu" not in command
    assert "--num_processes=4" in command and "--no-tracking" not in command and "--mixed_precision=no" in command
    assert not any(arg.startswith("--main_process_port") for arg in command)  # the config's rendezvous


def test_the_parent_exits_with_the_workers_code(tmp_path):
    exit_file = tmp_path / "stage.exit"
    leave = f"import os, sys; open(os.environ['{EXIT_CODE_FILE}'], 'w').write('3'); sys.exit(1)"
    assert run_launched([sys.executable, "-c", leave], exit_file) == 3  # a worker's code, not torchrun's 1
    assert run_launched([sys.executable, "-c", "import sys; sys.exit(1)"], exit_file) == 1  # none left: stale one gone
    assert run_launched([sys.executable, "-c", "pass"], exit_file) == 0


def test_the_launcher_dies_with_its_parent(tmp_path):
    """A killed `rlhf stage` (a cancelled flow run) takes its launcher with it, and the launcher its workers."""
    pid_file, exit_file = tmp_path / "launcher.pid", tmp_path / "stage.exit"
    launcher = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    parent_code = (
        "import sys; from pathlib import Path; from tasks.launch import run_launched; "
        f"run_launched([sys.executable, '-c', {launcher!r}], Path({str(exit_file)!r}))"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.monotonic() < deadline and parent.poll() is None, "the launcher never started"
        time.sleep(0.1)
    launcher_pid = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    wait_until_gone([launcher_pid], "the launcher outlived its parent")
