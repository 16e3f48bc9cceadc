"""The training precision when a config leaves it to the hardware (`bf16: null`)."""

from __future__ import annotations

import os

import torch

from rlhf_lib.config import ConfigError

DEFAULT_PRECISION_ENV = "RLHF_DEFAULT_PRECISION"
"""Environment variable that fixes what `bf16: null` means: `bf16` or `fp32`; unset: the hardware decides."""
_PRECISIONS = {"bf16": True, "fp32": False}


def fast_bf16_available(device_type: str | None = None) -> bool:
    """True on a CUDA GPU that supports bf16, and on a CPU with bf16 matrix instructions (AMX or AVX512-BF16).

    `device_type` ("cuda", "cpu") asks about that device, for work that stays on the CPU on a machine with a GPU;
    None asks about the GPU where torch sees one, else the CPU. On a 2-core Xeon with AMX (torch 2.13) a bf16
    matmul ran ~4x the fp32 rate, and bf16 autocast SFT kept the fp32 loss curve (tests/lib/test_precision.py),
    so such CPUs default to bf16 autocast.
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False  # mps and other backends: fp32
    # torch exposes these CPU feature checks only as private helpers; if they go away, assume no.
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


def default_bf16(device_type: str | None = None) -> bool:
    """What `bf16: null` resolves to: RLHF_DEFAULT_PRECISION if set, else `fast_bf16_available(device_type)`.

    The variable lets a user (or the test suite) get the same precision on every machine. DVC does not
    track it: after changing it, `dvc repro --force <stage>` retrains in the new precision.
    """
    chosen = os.environ.get(DEFAULT_PRECISION_ENV, "").strip().lower()
    if not chosen:
        return fast_bf16_available(device_type)
    if chosen not in _PRECISIONS:
        raise ConfigError(f"{DEFAULT_PRECISION_ENV}={chosen!r}: expected one of {sorted(_PRECISIONS)} or unset")
    return _PRECISIONS[chosen]


def use_bf16(requested: bool | None, device_type: str | None = None) -> bool:
    """A config's `bf16` resolved: an explicit True/False wins, None means `default_bf16(device_type)`."""
    return default_bf16(device_type) if requested is None else requested


def cast_frozen_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Store the parameters that are not trained (a LoRA policy's base) in `dtype`, in place."""
    for parameter in model.parameters():
        if not parameter.requires_grad and parameter.is_floating_point():
            parameter.data = parameter.data.to(dtype)
