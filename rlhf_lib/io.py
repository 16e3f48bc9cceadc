"""Files on disk: the library's cache folder, and atomic writes (a reader, or a resumed run, never sees a
half-written file or folder)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """Where the library caches what it builds once (converted models, compiled kernels): rlhf_lib under
    $XDG_CACHE_HOME, else ~/.cache."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlhf_lib"


def current_umask() -> int:
    """The process's umask, for giving staged outputs the modes a plain write would (tempfile makes files
    0600 and folders 0700, which leaves outputs unreadable to the rest of a team)."""
    # Linux reports it; elsewhere os.umask can only read it by setting it (briefly, for the whole process).
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a staging folder next to `target`; on success it replaces `target` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        staging.chmod(0o777 & ~current_umask())
        yield staging
        if target.exists():
            # rename() cannot replace a non-empty folder: move the old one aside first, then drop it.
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, then rename over `path`."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any, sort_keys: bool = True) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def atomic_write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """One JSON object per line, written atomically; ASCII escapes keep the bytes the same in any locale."""
    atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=True) + "\n" for record in records))
