"""fp32 `x @ W.T + b` for at most 8 rows of x, through a C kernel compiled on first use (`small_rows_linear.c`).

A decoding step of a batch of 8 multiplies 8 hidden states by every weight of the model. On a CPU that is
bound by how fast the weights stream from memory, and torch's fp32 linear (MKL) reached ~12 GB/s there
against ~18-30 GB/s for the kernel (2-core Xeon). No library we depend on ships such a kernel, so it is
compiled here, once per machine, with the system C compiler into a cache folder; where that fails (no
compiler, no OpenMP) a warning says so and callers keep torch's linear. `RLHF_NATIVE_KERNELS=0` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from rlhf_lib.io import cache_root

logger = logging.getLogger(__name__)

MAX_ROWS = 8
MIN_WIDTH = 64
"""Narrower inputs (a LoRA B matrix's 16) go to torch's linear, which is faster there (576 x 16: 3.8 us vs 5.1 us)."""
_SOURCE = Path(__file__).with_name("small_rows_linear.c")
# -march=native: the kernel is built for the machine it runs on (the cache key names the CPU).
# -fopenmp links libgomp.so.1, which resolves to the copy torch has already loaded: one thread pool.
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags, so that a cache shared by machines holds one build per CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    described = sorted({line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")})
    # Without /proc/cpuinfo, one build per host rather than risk an illegal instruction.
    return "\n".join([platform.machine(), platform.processor(), *(described or [platform.node()])])


def _library_path(compiler: str) -> Path:
    """Where the build for this source, compiler, flags and CPU is cached."""
    key = hashlib.sha256("\n".join([_SOURCE.read_text(), compiler, *_FLAGS, _cpu_signature()]).encode()).hexdigest()
    return cache_root() / "kernels" / f"small_rows_linear-{key[:16]}.so"


def _compile(compiler: str, library: Path, flags: list[str] = _FLAGS) -> None:
    """Build into a temporary file beside `library`, then rename: a concurrent process never loads half a file."""
    library.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{library.name}.", dir=library.parent)
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *flags, str(_SOURCE), "-o", staging],
            check=True,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=120,
        )
        os.replace(staging, library)
    finally:
        Path(staging).unlink(missing_ok=True)


def _self_check(kernel: ctypes._CFuncPtr, lanes: int) -> None:
    """A miscompiled kernel must not reach a model: compare one small product with torch's."""
    generator = torch.Generator().manual_seed(0)
    shapes = ((3, 2 * lanes), (5, 2 * lanes), (5,))
    x, weight, bias = (torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu") for shape in shapes)
    out = torch.empty(3, 5, dtype=torch.float32, device="cpu")
    kernel(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), out.data_ptr(), 3, 5, 2 * lanes, 1)
    # The first use may come under bf16 autocast (a bf16 trainer's sampling): the reference stays fp32.
    with torch.autocast("cpu", enabled=False):
        expected = torch.addmm(bias, x, weight.T)
    if not torch.allclose(out, expected, atol=1e-5):
        raise RuntimeError("the compiled kernel disagrees with torch on a 3 x 5 product")


def _load(library: Path) -> tuple[ctypes._CFuncPtr, int]:
    handle = ctypes.CDLL(str(library))
    kernel = handle.rlhf_small_rows_linear
    kernel.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 4
    kernel.restype = ctypes.c_int
    lanes = handle.rlhf_small_rows_linear_lanes()
    _self_check(kernel, lanes)
    return kernel, lanes


@functools.cache
def _kernel() -> tuple[ctypes._CFuncPtr, int] | None:
    """(the kernel, its vector width in floats), or None where it cannot be built or is turned off."""
    if os.environ.get("RLHF_NATIVE_KERNELS", "1") == "0":
        return None
    compiler = _compiler()
    try:
        if not compiler:
            raise FileNotFoundError("no C compiler on PATH (cc, gcc; or set CC)")
        library = _library_path(compiler)
        if library.exists():
            try:
                return _load(library)
            except Exception:  # a damaged cached build: build it again, once
                library.unlink(missing_ok=True)
        _compile(compiler, library)
        return _load(library)
    except Exception as error:  # any failure leaves torch's linear in charge, never a crash
        detail = getattr(error, "stderr", None) or error
        logger.warning("small-batch fp32 kernel unavailable, sampling uses torch's linear: %s", detail)
        return None


def available() -> bool:
    """Whether the kernel is built and loaded (builds it on the first call)."""
    return _kernel() is not None


def small_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """`F.linear(x, weight, bias)` through the kernel, or None where the kernel does not apply.

    It applies to contiguous fp32 CPU tensors with at most `MAX_ROWS` rows (all leading dims together)
    and an input width of at least `MIN_WIDTH` that is a multiple of the kernel's vector width (8 or 16).
    It records no autograd graph.
    """
    loaded = _kernel()
    if loaded is None or x.dim() == 0:
        return None
    kernel, lanes = loaded
    rows, width = x.numel() // max(x.shape[-1], 1), x.shape[-1]
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if not 1 <= rows <= MAX_ROWS or width < MIN_WIDTH or width % lanes or weight.dim() != 2 or weight.shape[1] != width:
        return None
    if (bias is not None and bias.shape != weight.shape[:1]) or weight.shape[0] >= 2**31 or width >= 2**31:
        return None
    if any(t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
        return None
    out = torch.empty(*x.shape[:-1], weight.shape[0], dtype=torch.float32, device="cpu")
    bias_pointer = None if bias is None else bias.data_ptr()
    status = kernel(
        x.data_ptr(),
        weight.data_ptr(),
        bias_pointer,
        out.data_ptr(),
        rows,
        weight.shape[0],
        width,
        torch.get_num_threads(),
    )
    if status != 0:
        raise RuntimeError(f"small_rows_linear refused rows={rows}, width={width}")
    return out
