"""Runs of several processes started by `accelerate launch` (torchrun): what every trainer does on joining one."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

import torch

logger = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def exit_with_parent() -> None:
    """Have the kernel kill this process when the process that started it dies (Linux).

    torchrun, behind `accelerate launch`, starts each worker in a session of its own, so a kill -9 of the launcher
    would leave the workers running, writing checkpoints under a rerun; `rlhf stage` ties the launcher to itself
    the same way. No maintained library wraps this one prctl call, hence ctypes.
    """
    if not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != launcher:  # the launcher died before the call took effect
        os.kill(os.getpid(), signal.SIGKILL)


def enter_launched_run() -> bool:
    """Tie a process of a multi-process launch to its launcher; return True if it must run on CPU (no CUDA).

    The caller then runs on CPU (`Accelerator(cpu=True)`, `use_cpu`): accelerate joins CPU processes over gloo only
    when told so, and otherwise each would train alone on all the data.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    exit_with_parent()
    if torch.cuda.is_available():
        return False
    sharded = [name for name in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{name}", "").lower() == "true"]
    if sharded:
        # accelerate (1.15) turns FSDP and DeepSpeed on for GPU-type devices only; CPU processes join as DDP.
        logger.warning("%s needs GPUs: these CPU processes train data parallel (DDP) instead", sharded[0])
    return True
