"""Running a peft LoRA model as its base model, and with its adapters merged, without peft's per-call costs.

Both are context managers; outside the block the model is as it was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _swappable_lora_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]] | None:
    """(parent, attribute name, LoRA layer) for every adapted layer, or None unless all are unmerged LoRA."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            hooked = bool(child._forward_hooks or child._forward_pre_hooks)
            if isinstance(child, ModulesToSaveWrapper) or (
                isinstance(child, BaseTunerLayer) and (not isinstance(child, LoraLayer) or child.merged or hooked)
            ):
                return None  # other tuners, saved module copies, merged weights or hooks: leave it to peft
            if isinstance(child, LoraLayer):
                swaps.append((parent, name, child))
    return swaps


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """Within the block, `model` is its base model: each LoRA layer is swapped for the layer it wraps.

    peft's `disable_adapter()` gives the same outputs, but it reads the model's adapter status and toggles
    every layer on the way in and out (34 ms for SmolLM2-135M with all-linear LoRA, on each reference pass
    and each sampling batch of PPO), and its layers still run their Python forward on every call. Where
    the model holds anything but unmerged LoRA layers, peft's `disable_adapter()` is used.
    """
    swaps = _swappable_lora_layers(model)
    if swaps is None:
        with model.disable_adapter():
            yield
        return
    for parent, name, layer in swaps:
        setattr(parent, name, layer.get_base_layer())
    try:
        yield
    finally:
        for parent, name, layer in swaps:
            setattr(parent, name, layer)


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
    of a 2.4 s batch in the fp32 PPO benchmark); merged, the base layers run in their place
    (`adapters_off`). Written by hand rather than with peft's merge_adapter,
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
    with torch.no_grad(), adapters_off(model):
        for weight, lora_b, lora_a, scaling in updates:
            weight.addmm_(lora_b, lora_a, alpha=scaling)
        try:
            yield True
        finally:
            for weight, lora_b, lora_a, scaling in updates:
                weight.addmm_(lora_b, lora_a, alpha=-scaling)
