"""SFT and PPO under `accelerate launch` with 2 CPU processes (gloo), against the same runs in one process.

One 2-process PPO run is killed (SIGKILL to the launcher's process group) after its second checkpoint and run again;
the test then checks that it resumed, that its first update, its metrics and its final weights match one process
holding the whole batch, and that only the main process wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf_lib.ppo.checkpoint import TRAINER_STATE, list_checkpoints, trainable_state
from tests.lib import ppo_worker, sft_worker
from tests.pipeline.smoke_project import free_port, wait_until_gone

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPARED_METRICS = [
    "loss/policy_avg",
    "loss/value_avg",
    "policy/clipfrac_avg",
    "policy/entropy_avg",
    "objective/kl",
    "objective/scores",
    "objective/entropy",
    "response_length",
    "val/num_eos_tokens",
    "lr",
    "held_out/reward",
    "held_out/judge/length",
    "held_out/kl",
]


# accelerate's torchrun launcher; the trainers run it on CPU over gloo where there is no CUDA.
DATA_PARALLEL = ("--multi_gpu", "--num_machines=1")


def _launch(worker, model_dir: str, out_dir: Path, *extra: str, layout=DATA_PARALLEL) -> subprocess.Popen:
    """`worker`'s file under `accelerate launch` with 2 processes, in a process group of its own."""
    command = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        *layout,
        "--num_processes=2",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={free_port()}",
        str(Path(worker.__file__)),
        model_dir,
        str(out_dir),
        *extra,
    ]
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = (out_dir / "launch.log").open("a")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(condition, process: subprocess.Popen, out_dir: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(
                f"the 2-process run stopped or stalled; its log:\n{(out_dir / 'launch.log').read_text()[-3000:]}"
            )
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _metric_rows(path: Path) -> dict[int, dict[str, float]]:
    return {row["step"]: row for row in map(json.loads, path.read_text().splitlines())}


def test_two_processes_compute_what_one_does_and_resume_after_a_kill(tiny_lm_dir, tmp_path):
    two = tmp_path / "two"
    two.mkdir()
    checkpoints = two / "checkpoints"

    # 1. A slow 2-process run; its launcher gets SIGKILL once checkpoint-2 is written. torchrun starts the workers in
    # sessions of their own, so they must die with the launcher by themselves (else they would finish the run).
    killed = _launch(ppo_worker, tiny_lm_dir, two, "--reward-seconds=1.5")
    _wait_for(lambda: (checkpoints / "checkpoint-2").is_dir(), killed, two)
    workers = _children(killed.pid)
    assert len(workers) == 2, workers
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    wait_until_gone(workers, "workers that outlived their launcher")
    written = [path.name for path in list_checkpoints(checkpoints)]
    assert written == ["checkpoint-1", "checkpoint-2"], written

    # 2. The rerun resumes from checkpoint-2 and finishes.
    rerun = _launch(ppo_worker, tiny_lm_dir, two)
    _wait_for(lambda: rerun.poll() == 0, rerun, two)
    history = [json.loads((two / f"history-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [row["step"] for row in history[0]] == [3, 4]
    timing = {"eps"}  # episodes per second, each process timing itself
    assert [row.keys() - timing for row in history[0]] == [row.keys() - timing for row in history[1]]
    for row_0, row_1 in zip(*history, strict=True):
        assert {k: v for k, v in row_0.items() if k not in timing} == {
            k: v for k, v in row_1.items() if k not in timing
        }, "every process must see the same (global) metrics"
    # One writer: only rank 0 logged metrics, and each checkpoint records the 2 processes that made it.
    assert not (two / "metrics-rank1.jsonl").exists()
    assert [path.name for path in list_checkpoints(checkpoints)] == ["checkpoint-3", "checkpoint-4"]
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint-3", "checkpoint-4"]
    state = json.loads((checkpoints / "checkpoint-4" / TRAINER_STATE).read_text())
    assert state["num_processes"] == 2

    # 3. The same run in one process, uninterrupted.
    one = tmp_path / "one"
    one.mkdir()
    reference = ppo_worker.build_trainer(tiny_lm_dir, one)
    ppo_worker.record_first_update(reference, one / ppo_worker.FIRST_UPDATE_GRADIENTS)
    reference.train()

    # The first update's gradients: 2 x B/2 (averaged by DistributedDataParallel) against 1 x B.
    gradients_two = load_file(two / ppo_worker.FIRST_UPDATE_GRADIENTS)
    gradients_one = load_file(one / ppo_worker.FIRST_UPDATE_GRADIENTS)
    assert gradients_two.keys() == gradients_one.keys() and len(gradients_one) > 0
    for name, gradient in gradients_one.items():
        torch.testing.assert_close(gradients_two[name], gradient, rtol=1e-4, atol=1e-6, msg=name)

    # Every step's metrics, the killed run's steps 1-2 and the resumed run's 3-4, against one process.
    rows_one = _metric_rows(one / "metrics-rank0.jsonl")
    rows_two = _metric_rows(two / "metrics-rank0.jsonl")
    assert sorted(rows_two) == sorted(rows_one) == [0, 1, 2, 3, 4]
    for step, row in rows_one.items():
        for key in COMPARED_METRICS:
            if f"ppo/{key}" in row:
                assert rows_two[step][f"ppo/{key}"] == pytest.approx(row[f"ppo/{key}"], rel=1e-3, abs=1e-5), (
                    step,
                    key,
                )
    assert rows_one[2]["ppo/held_out/judge/length"] > 0  # the held-out metrics were computed, not defaulted

    # Resumed across a kill, the 2-process run ends with the one-process run's weights. Training moved them by about
    # 1e-2; Adam turns float noise in near-zero gradients into differences of up to 1e-5, so 1e-4 is the bound.
    final_two = load_file(two / ppo_worker.FINAL_WEIGHTS)
    start = trainable_state(ppo_worker.build_trainer(tiny_lm_dir, tmp_path / "start").policy)
    for name, weight in trainable_state(reference.policy).items():
        torch.testing.assert_close(final_two[name], weight, rtol=0, atol=1e-4, msg=name)
    moved = max((weight - start[name]).abs().max().item() for name, weight in final_two.items())
    assert moved > 5e-3, "the run must have trained, or equal weights would prove nothing"

    # 4. Resuming the 2-process checkpoints with one process is refused, naming both counts.
    with pytest.raises(ValueError, match=r"2 process\(es\), this run has 1"):
        ppo_worker.build_trainer(tiny_lm_dir, two).train()


def test_sft_on_two_processes_lowers_held_out_loss_as_one_process_does(tiny_lm_dir, tmp_path):
    """2 processes x 4 rows against 1 x 8: the same global batch, so nearly the same held-out loss.

    Launched with the shipped FSDP config: accelerate (1.15) turns FSDP on for GPU-type devices only, so CPU
    processes train data parallel, and the trainer says so.
    """
    two = tmp_path / "two"
    two.mkdir()
    fsdp = ("--config_file", str(REPO / "configs/accelerate/fsdp.yaml"))
    launched = _launch(sft_worker, tiny_lm_dir, two, "--per-device-batch-size=4", layout=fsdp)
    _wait_for(lambda: launched.poll() == 0, launched, two)
    assert "FSDP needs GPUs: these CPU processes train data parallel (DDP) instead" in (two / "launch.log").read_text()
    results = [json.loads(path.read_text()) for path in sorted(two.glob("result-rank*.json"))]
    assert len(results) == 2 and results[0] == results[1]
    assert results[0]["processes"] == 2
    one = sft_worker.run(tiny_lm_dir, tmp_path / "one", per_device_batch_size=8)
    assert one["processes"] == 1
    for result in (one, results[0]):
        assert result["after"] < result["before"] - 2.0, result
    assert results[0]["after"] == pytest.approx(one["after"], abs=0.1)
    assert (two / "final" / "model.safetensors").is_file()
