"""What the processes of a data-parallel PPO run share.

Under `accelerate launch` each process holds an equal shard of every batch. These helpers turn its local
numbers into the global ones that one process holding the whole batch would compute. With one process
every helper returns its input.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

T = TypeVar("T")


class DataParallel:
    """The process layout of one run, read from its Accelerator."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.size = accelerator.num_processes
        """Number of processes."""
        self.rank = accelerator.process_index
        """This process's index, 0 to size - 1."""
        self.is_main = accelerator.is_main_process
        """True on the one process that writes checkpoints, history and metrics."""

    def shard(self, items: list[T]) -> list[T]:
        """This process's contiguous share of `items`, whose length the number of processes must divide."""
        if len(items) % self.size:
            raise ValueError(f"{len(items)} items cannot be shared equally between {self.size} processes")
        share = len(items) // self.size
        return items[self.rank * share : (self.rank + 1) * share]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over the processes."""
        return self.accelerator.reduce(tensor, "sum")

    def means(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over the processes of each value: the global mean of a per-episode mean, as shards are equal."""
        if self.size == 1 or not values:
            return values
        local = torch.tensor(list(values.values()), dtype=torch.float64, device=self.accelerator.device)
        return dict(zip(values, self.accelerator.reduce(local, "mean").tolist(), strict=True))

    def totals(self, counts: dict[str, float]) -> dict[str, float]:
        """Each count summed over the processes, over the union of their keys (a key one process lacks counts 0)."""
        if self.size == 1:
            return counts
        summed: dict[str, float] = {}
        for shard in gather_object([counts]):
            for key, value in shard.items():
                summed[key] = summed.get(key, 0.0) + value
        return dict(sorted(summed.items()))

    def all_true(self, flag: bool) -> bool:
        """True if `flag` is true on every process, so that every process takes the same branch."""
        if self.size == 1:
            return flag
        local = torch.tensor(float(flag), device=self.accelerator.device)
        return bool(self.accelerator.reduce(local, "sum").item() == self.size)

    def largest(self, value: int) -> int:
        """The largest of the processes' values."""
        if self.size == 1:
            return value
        local = torch.tensor(float(value), device=self.accelerator.device)
        return int(self.accelerator.reduce(local, "max").item())
