"""One pipeline run at a time per project folder: a lock file that a flow run holds from start to end, and that
each `rlhf stage` takes unless the flow run that started it holds it already.

Two runs in one folder would overwrite each other's params.yaml (a flow run puts its profile there), models and
metrics. The second run fails at once, naming the lock and who holds it (DVC's own repo lock already keeps two
`dvc repro` apart; this one also keeps a `dvc repro` out of a flow run's pauses between stages). The lock is an
OS file lock (filelock), so a killed run releases it and no stale lock ever needs deleting.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from rlhf_lib.io import atomic_write_text

LOCK_FILE = Path(".rlhf-pipeline.lock")
HOLDER_FILE = Path(".rlhf-pipeline.holder.json")
HELD_ENV = "RLHF_PIPELINE_LOCK_HELD"
"""Set for the processes a lock holder starts (the flow's stages), to the lock's absolute path."""


class PipelineBusyError(RuntimeError):
    """Another pipeline run holds this project's lock."""


@contextmanager
def pipeline_lock(what: str, folder: Path = Path(".")) -> Iterator[None]:
    """Hold the project's pipeline lock within the block, or raise PipelineBusyError at once."""
    lock_path = (folder / LOCK_FILE).resolve()
    if os.environ.get(HELD_ENV) == str(lock_path):  # our parent run holds it
        yield
        return
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise PipelineBusyError(
            f"another pipeline run holds {lock_path} ({_holder(folder)}); wait for it to finish, or run this one "
            "in another clone of the project"
        ) from None
    holder = folder / HOLDER_FILE
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    atomic_write_text(holder, json.dumps({"pid": os.getpid(), "what": what, "since": since}))
    previous = os.environ.get(HELD_ENV)
    os.environ[HELD_ENV] = str(lock_path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(HELD_ENV, None)
        else:
            os.environ[HELD_ENV] = previous
        holder.unlink(missing_ok=True)
        lock.release()


def _holder(folder: Path) -> str:
    try:
        holder = json.loads((folder / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return "holder unknown"
    return f"{holder['what']}, process {holder['pid']}, since {holder['since']}"
