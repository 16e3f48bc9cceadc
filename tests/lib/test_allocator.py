"""The CPU allocator setting: a freed large block is reused, not unmapped and faulted in again."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import torch

from rlhf_lib.allocator import keep_freed_memory

BLOCK_BYTES = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB), like a step's logits
PAGE_BYTES = resource.getpagesize()


def _faults_to_fill_a_fresh_block() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(BLOCK_BYTES // 4)
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_a_freed_large_block_is_reused_without_page_faults():
    assert keep_freed_memory()
    # The first blocks grow the heap and fault in once; after that a block of this size is served from
    # freed heap memory, bar the odd new region when other allocations land beside a freed block.
    warm_up = [_faults_to_fill_a_fresh_block() for _ in range(2)]
    steady = [_faults_to_fill_a_fresh_block() for _ in range(8)]
    block_pages = BLOCK_BYTES // PAGE_BYTES
    # glibc's default maps and unmaps such a block each time: block_pages faults in each of the 8 rounds
    assert sum(steady) < 3 * block_pages, (warm_up, steady)


def test_the_setting_can_be_turned_off():
    code = "from rlhf_lib.allocator import keep_freed_memory; print(keep_freed_memory())"
    env = os.environ | {"RLHF_KEEP_FREED_MEMORY": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
