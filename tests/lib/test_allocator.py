"""The CPU allocator setting: a freed large block is reused, not unmapped and faulted in again.

Measured in a fresh interpreter that has imported the trainers, as a stage process has: in the test
process, objects from hundreds of collected test modules land beside freed blocks and blur the count.
With torch alone imported, glibc 2.36 did not reuse the block: torch asks for 64-byte-aligned memory,
glibc's memalign needs a free chunk 96 bytes larger than the request, and the heap layout decides
whether the freed block has that slack.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

BLOCK_BYTES = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB), like a step's logits
BLOCK_PAGES = BLOCK_BYTES // resource.getpagesize()
ROUNDS = 10
WARM_UP = 2  # the first blocks grow the heap and fault in once

_MEASURE = f"""
import resource, torch
import rlhf_lib.ppo.trainer, rlhf_lib.sft_trainer  # what a stage process holds
from rlhf_lib.allocator import keep_freed_memory

def faults_to_fill_a_fresh_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones({BLOCK_BYTES // 4})
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

kept = keep_freed_memory()
print(kept, *[faults_to_fill_a_fresh_block() for _ in range({ROUNDS})])
"""


def _page_faults_per_block(setting: str) -> tuple[bool, list[int]]:
    env = os.environ | {"RLHF_KEEP_FREED_MEMORY": setting}
    out = subprocess.run([sys.executable, "-c", _MEASURE], env=env, capture_output=True, text=True, check=True)
    kept, *faults = out.stdout.split()
    return kept == "True", [int(count) for count in faults]


def test_a_freed_large_block_is_reused_without_page_faults():
    kept, faults = _page_faults_per_block("1")
    assert kept
    assert sum(faults[WARM_UP:]) < 2 * BLOCK_PAGES, faults  # measured: 0 after the warm-up


def test_turned_off_every_block_faults_in_again():
    kept, faults = _page_faults_per_block("0")
    assert not kept
    # glibc's default maps and unmaps such a block each time: one fault per page, every round
    assert sum(faults[WARM_UP:]) > (ROUNDS - WARM_UP - 1) * BLOCK_PAGES, faults
