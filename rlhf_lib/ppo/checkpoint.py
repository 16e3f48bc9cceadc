"""PPO checkpoints: trainable weights, optimizer, scheduler, RNG, KL coefficient and data position.

Weights go to safetensors and the optimizer to a tensors-only file read back with
`weights_only=True`, so loading a checkpoint never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlhf_lib.io import atomic_dir

TRAINABLE_WEIGHTS = "trainable.safetensors"
OPTIMIZER_STATE = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, each tensor once (tied weights share storage)."""
    seen: set[int] = set()
    state = {}
    for name, param in model.named_parameters():
        if param.requires_grad and param.data_ptr() not in seen:
            seen.add(param.data_ptr())
            state[name] = param.detach().contiguous().cpu()
    return state


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    trainer_state: dict[str, Any],
    torch_rng_states: list[tuple[torch.Tensor, torch.Tensor | None]],
) -> None:
    """Write a complete checkpoint folder atomically: a kill mid-write leaves no `checkpoint-N`.

    `torch_rng_states` holds each process's (CPU, CUDA or None) torch RNG states, in process order (one entry
    with one process): see `rng_states`.
    """
    np_state = np.random.get_state()
    rng = {
        "python": _to_json(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    with atomic_dir(path) as staging:
        save_file(trainable_state(model), staging / TRAINABLE_WEIGHTS)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.stack([cpu for cpu, _ in torch_rng_states]),
                "cuda_rng": [cuda for _, cuda in torch_rng_states if cuda is not None],
            },
            staging / OPTIMIZER_STATE,
        )
        (staging / TRAINER_STATE).write_text(json.dumps({**trainer_state, "rng": rng}, indent=2))


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer, scheduler, process_index: int = 0, num_processes: int = 1
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this process's RNG in place; return the saved trainer state.

    Each process resumes its own torch sampling stream, so a run resumes only with the number of processes it
    saved. Python's and numpy's RNG states (which PPO does not draw from) are the main process's, in every process.
    """
    state = json.loads((path / TRAINER_STATE).read_text())
    saved_processes = state.get("num_processes", 1)
    if saved_processes != num_processes:
        raise ValueError(
            f"checkpoint {path} was written by a run of {saved_processes} process(es), this run has {num_processes}:"
            f" resume with {saved_processes}, or delete {path.parent} to start over"
        )
    weights = load_file(path / TRAINABLE_WEIGHTS)
    missing = set(weights) - {name for name, _ in model.named_parameters()}
    if missing:
        raise ValueError(f"checkpoint {path} has weights the model lacks: {sorted(missing)[:5]}")
    model.load_state_dict(weights, strict=False)
    blobs = torch.load(path / OPTIMIZER_STATE, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(blobs["optimizer"])
    scheduler.load_state_dict(blobs["scheduler"])
    # clone: torch.set_rng_state reads a row of the stacked states from the start of its storage and crashes.
    torch.set_rng_state(blobs["torch_rng"].view(num_processes, -1)[process_index].clone())
    if blobs["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(blobs["cuda_rng"][process_index])
    rng = state.pop("rng")
    random.setstate(_from_json(rng["python"]))
    kind, keys, *rest = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return state


def rng_states() -> tuple[torch.Tensor, torch.Tensor | None]:
    """This process's torch RNG states: CPU, and its current CUDA device's where there is one."""
    return torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first (staging folders are ignored)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT_NAME.match(p.name))]
    return [path for _, path in sorted(found)]


def prune_checkpoints(folder: Path, keep: int) -> None:
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _to_json(value):
    return [_to_json(v) for v in value] if isinstance(value, tuple | list) else value


def _from_json(value):
    return tuple(_from_json(v) for v in value) if isinstance(value, list) else value
