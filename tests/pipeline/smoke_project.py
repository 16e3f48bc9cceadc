"""A throwaway copy of the project on the smoke profile, in its own git repo, and servers that always stop.

Pipeline tests run real `dvc`, `prefect` and `mlflow` commands in such a copy, so they never touch
the developer's params.yaml, dvc.lock, models or MLflow store.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
}


def copy_project(target: Path, profile: str = "profiles/smoke.yaml") -> Path:
    """Copy the project's tracked and unignored files to `target`, use `profile` as params.yaml, git commit."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    shutil.copy2(target / profile, target / "params.yaml")
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "smoke project"]):
        subprocess.run([*git, *command], cwd=target, check=True)
    return target


def project_env(project: Path, **extra: str) -> dict[str, str]:
    """Environment for commands in `project`: offline, this venv's tools first, no outside MLflow/Prefect."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "PREFECT_", "RLHF_"))}
    env |= OFFLINE_ENV | {"PATH": f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}", "PWD": str(project)}
    # The suite's precision (tests/conftest.py), so stages run the same on every CPU.
    env["RLHF_DEFAULT_PRECISION"] = os.environ["RLHF_DEFAULT_PRECISION"]
    # Commits that DVC makes (experiments) need an identity, which a fresh machine's git may lack.
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", "test")
        env.setdefault(f"GIT_{role}_EMAIL", "test@example.com")
    env["PREFECT_HOME"] = str(project / ".prefect")
    return env | extra


def run(command: list[str], project: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command in the project; output is captured and echoed so a failing test shows it."""
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"$ {' '.join(command)}  (exit {result.returncode})\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def wait_until_gone(pids: list[int], what: str, timeout: float = 30) -> None:
    """Wait until every process in `pids` has exited (a zombie counts as gone); fail naming `what` if not."""
    deadline = time.monotonic() + timeout
    while any(_process_state(pid) != "Z" for pid in pids):
        assert time.monotonic() < deadline, f"{what}: {pids} still running"
        time.sleep(0.1)


def _process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat, or "Z" for a process that is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "Z"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def background(command: list[str], project: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Start a long-running command in its own process group; kill the whole group on exit, pass or fail."""
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=10)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def stages_run(output: str) -> set[str]:
    """Stage names DVC reports it ran ("Running stage 'ppo':")."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}
