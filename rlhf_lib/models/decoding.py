"""Faster token-by-token sampling from a policy: a small-batch linear kernel and, for LoRA, merged adapters.

Both are context managers for a `generate` call under no_grad; outside the block the model is as it was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PreTrainedModel

from rlhf_lib.models import small_rows_linear


@contextmanager
def small_rows_linears(model: nn.Module) -> Iterator[int]:
    """Within the block, the model's fp32 CPU linears multiply a few rows through `small_rows_linear`.

    A decoding step of a batch of 8 multiplies 8 rows by every weight; there the kernel beats torch's
    linear (SmolLM2-135M, 8 rows, 2-core Xeon: 24 ms against 36 ms a token for the layers, 3.9 ms against
    12 ms for the LM head). Calls with more rows (the prompt's prefill), with grad or under autocast fall
    through to the plain linear. Yields how many linears were switched (0 where the kernel is unavailable).
    """
    linears = [module for module in model.modules() if _plain_fp32_cpu_linear(module)]
    if not linears or not small_rows_linear.available():
        yield 0
        return
    for linear in linears:
        linear.forward = _small_rows_forward(linear, linear.forward)
    try:
        yield len(linears)
    finally:
        for linear in linears:
            del linear.forward  # the instance attribute; the class's forward is back


def _plain_fp32_cpu_linear(module: nn.Module) -> bool:
    # A subclass that overrides forward, or a module with a forward of its own (accelerate's hooks set
    # one), computes more than x @ W.T + b: those are left alone.
    return (
        isinstance(module, nn.Linear)
        and type(module).forward is nn.Linear.forward
        and "forward" not in vars(module)
        and module.weight.device.type == "cpu"
        and module.weight.dtype == torch.float32
    )


Forward = Callable[[torch.Tensor], torch.Tensor]


def _small_rows_forward(linear: nn.Linear, plain_forward: Forward) -> Forward:
    def forward(hidden: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            return plain_forward(hidden)
        out = small_rows_linear.small_rows_linear(hidden, linear.weight, linear.bias)
        return plain_forward(hidden) if out is None else out

    return forward


def _plain_lora_updates(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]] | None:
    """(base weight, B, A, scaling) of every active adapter, or None unless all are vanilla fp32 linear LoRA."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    updates = []
    for layer in layers:
        if not isinstance(layer, LoraLinear) or layer.fan_in_fan_out or layer.merged:
            return None
        for name in layer.active_adapters:
            if name not in layer.lora_A:
                continue
            lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
            if name in layer.lora_variant or lora_b.bias is not None:  # DoRA and friends, LoRA bias
                return None
            updates.append((layer.base_layer.weight, lora_b.weight, lora_a.weight, layer.scaling[name]))
    if not updates or any(tensor.dtype != torch.float32 for update in updates for tensor in update[:3]):
        return None
    # A tied weight (an adapted LM head sharing the input embedding) would carry the update into both.
    uses = Counter(p.untyped_storage().data_ptr() for _, p in model.named_parameters(remove_duplicate=False))
    if any(uses[weight.untyped_storage().data_ptr()] > 1 for weight, *_ in updates):
        return None
    return updates


@contextmanager
def merged_lora(model: nn.Module) -> Iterator[bool]:
    """Within the block, a peft model runs as one set of fp32 weights: base + scaling * B @ A, adapters off.

    Sampling through peft's LoRA layers costs two extra small matmuls per adapted linear per token (0.4 s
    of a 2.4 s batch in the fp32 PPO benchmark). Written by hand rather than with peft's merge_adapter,
    whose B @ A temporaries and separate add and scale took 0.14 s a merge and unmerge against 0.08 s
    for one in-place addmm_ per layer. Taking the update out again rounds, so a base weight can move by
    an ulp per merge (tested); a bf16 base, a tied weight or a LoRA variant (DoRA, LoRA bias) is left
    unmerged.
    Yields whether the adapters were merged.
    """
    updates = _plain_lora_updates(model) if hasattr(model, "disable_adapter") else None
    if updates is None:
        yield False
        return
    with torch.no_grad(), model.disable_adapter():
        for weight, lora_b, lora_a, scaling in updates:
            weight.addmm_(lora_b, lora_a, alpha=scaling)
        try:
            yield True
        finally:
            for weight, lora_b, lora_a, scaling in updates:
                weight.addmm_(lora_b, lora_a, alpha=-scaling)


@contextmanager
def fast_sampling(model: PreTrainedModel) -> Iterator[None]:
    """`merged_lora` and `small_rows_linears` together, for a `generate` call."""
    with merged_lora(model), small_rows_linears(model):
        yield
