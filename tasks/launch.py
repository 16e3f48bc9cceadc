"""`rlhf stage` in several processes: the command that starts a training stage under `accelerate launch`, and
what each started process needs to know (its rank, where to leave its exit code).

The `rlhf stage` process that the user, DVC or Prefect started stays the parent: it holds the pipeline lock, starts
the launcher, and exits with the workers' exit code (2 bad input, 3 service down), which torchrun would reduce to 1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from rlhf_lib.processes import exit_with_parent
from tasks.params import PipelineParams

EXIT_CODE_FILE = "RLHF_LAUNCH_EXIT_FILE"
"""Environment variable naming the file a worker writes its exit code to."""


def is_worker() -> bool:
    """True in a process started by a launcher (torchrun sets RANK): by `rlhf stage`, or by a user's own
    `accelerate launch -m tasks.cli stage <name>`."""
    return "RANK" in os.environ


def takes_lock() -> bool:
    """Whether this process takes the project's pipeline lock: a plain `rlhf stage`, or rank 0 of a user's own
    `accelerate launch` (the processes that `rlhf stage` starts run under the lock their parent holds)."""
    return not is_worker() or (EXIT_CODE_FILE not in os.environ and is_main_worker())


def is_main_worker() -> bool:
    """True in the one process that tracks and writes: rank 0, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def processes_for(stage: str, params: PipelineParams) -> int:
    """How many processes `stage` runs in."""
    launch = params.launch
    return launch.num_processes if stage in launch.stages else 1


def launch_command(stage: str, params: PipelineParams, params_path: Path, tracking: bool) -> list[str]:
    """`accelerate launch ... -m tasks.cli stage <stage>` with the params' process count and config file."""
    launch = params.launch
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    # --multi_gpu is accelerate's torchrun launcher; on a machine without CUDA the trainers join over gloo.
    # A config file brings its own rendezvous (main_process_ip and port, for several machines); without one, a
    # free port on this machine.
    layout = (
        ["--config_file", launch.config_file]
        if launch.config_file
        else ["--multi_gpu", "--num_machines=1", f"--main_process_port={_free_port()}"]
    )
    stage_args = ["stage", stage, "--params", str(params_path), *([] if tracking else ["--no-tracking"])]
    return [
        accelerate,
        "launch",
        *layout,
        # Precision comes from params (`bf16`), not from the launcher, which would override a `bf16: false`.
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--num_processes={launch.num_processes}",
        "-m",
        "tasks.cli",
        *stage_args,
    ]


def run_launched(command: list[str], exit_code_file: Path) -> int:
    """Run the launcher; return the workers' own exit code when one left it, else the launcher's."""
    exit_code_file.parent.mkdir(parents=True, exist_ok=True)
    exit_code_file.unlink(missing_ok=True)
    environment = os.environ | {EXIT_CODE_FILE: str(exit_code_file)}
    # The launcher dies with this process (a cancelled flow run, a kill), and its workers die with it.
    launcher = subprocess.run(command, env=environment, check=False, preexec_fn=exit_with_parent)  # noqa: PLW1509
    if launcher.returncode and exit_code_file.is_file():
        return int(exit_code_file.read_text())
    return launcher.returncode


def leave_exit_code(code: int) -> None:
    """In a worker that `rlhf stage` started, record the exit code for it (failing workers write the same kind);
    elsewhere nothing."""
    if EXIT_CODE_FILE in os.environ:
        Path(os.environ[EXIT_CODE_FILE]).write_text(str(code))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
