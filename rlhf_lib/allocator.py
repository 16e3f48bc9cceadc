"""Keep freed CPU memory for reuse instead of handing it back to the OS after every training step.

glibc serves each allocation above 32 MiB (logits, their gradients, the embedding's gradient) with a
fresh mmap and unmaps it on free, so every step page-faults its large tensors back in: SmolLM2-135M's
bf16 SFT step (batch 8 x 128 tokens) took 500,000 minor faults and 3.9 s; with mmap off and no trimming,
40,000 faults and 2.35 s, for an 8% higher peak RSS (measured on 2 cores). Written by hand because
torch has no caching allocator for CPU tensors; a jemalloc/tcmalloc LD_PRELOAD does the same job when a
launcher can set it. Set RLHF_KEEP_FREED_MEMORY=0 to leave malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

logger = logging.getLogger(__name__)

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # the largest value mallopt's int takes: in effect, never give the heap back
_applied = False


def keep_freed_memory() -> bool:
    """Tell glibc malloc to serve big blocks from its heap and not to trim it; True if it now does.

    Process-wide and idempotent; a no-op on other C libraries and platforms, or when opted out.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("RLHF_KEEP_FREED_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    if not _applied:
        logger.warning("mallopt refused; freed memory goes back to the OS after each step (slower on CPU)")
    return _applied
