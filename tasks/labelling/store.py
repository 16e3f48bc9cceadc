"""The labelling queue and its labels: pairs to compare in data/human/queue.jsonl, one label per line appended
to data/human/preferences.jsonl (versioned in git and a dependency of the `reward` stage, so new labels make
`dvc repro` retrain the reward model).

A label is one `os.write` of one line under a file lock, then fsync: a killed server loses at most the label it
had not yet answered for, and a line cut short by a crash is dropped on the next read and the next append.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from rlhf_lib.config import ConfigError

HUMAN_DIR = Path("data/human")
QUEUE_FILE = HUMAN_DIR / "queue.jsonl"
LABELS_FILE = HUMAN_DIR / "preferences.jsonl"
LEASE_SECONDS = 600.0
"""An item shown to one person is kept from the others this long (several people labelling at once)."""


@dataclass(frozen=True)
class Pair:
    """Two responses to one prompt, and the model versions that wrote them."""

    pair_id: str
    prompt: str
    response_a: str
    response_b: str
    model_a: str
    model_b: str


def read_queue(path: Path = QUEUE_FILE) -> list[Pair]:
    """The queue's pairs, in order; a malformed line or a repeated id is an error naming the line."""
    if not path.is_file():
        raise ConfigError(f"labelling queue {path} not found: build one with `rlhf label queue`")
    pairs, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            pair = Pair(**json.loads(line))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{path}:{number}: not a pair ({err})") from None
        if pair.pair_id in seen:
            raise ConfigError(f"{path}:{number}: pair id {pair.pair_id!r} appears twice")
        seen.add(pair.pair_id)
        pairs.append(pair)
    return pairs


def read_labels(path: Path = LABELS_FILE) -> list[dict]:
    """Every complete label row (a last line without its newline was cut short by a crash: not a label)."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


class LabelLog:
    """A JSONL file of rows with an id (`key`: a pair's labels, an item's ratings), appended to under a file lock;
    knows which ids it holds."""

    def __init__(self, path: Path = LABELS_FILE, key: str = "pair_id") -> None:
        self.path, self.key = path, key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(f"{path}.lock")

    def labelled_ids(self) -> set[str]:
        return {row[self.key] for row in read_labels(self.path)}

    def append_once(self, row: dict) -> bool:
        """Append `row` unless its id is in the file already (False then); durable when it returns."""
        with self.lock:
            if row[self.key] in self.labelled_ids():
                return False
            line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                _drop_torn_line(descriptor)
                os.write(descriptor, line)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            return True


def _drop_torn_line(descriptor: int) -> None:
    """Cut a last line that a crash left without its newline, so the next label starts on a line of its own."""
    size = os.fstat(descriptor).st_size
    if size == 0 or os.pread(descriptor, 1, size - 1) == b"\n":
        return
    tail = os.pread(descriptor, min(size, 1 << 20), max(0, size - (1 << 20)))
    os.ftruncate(descriptor, size - len(tail) + tail.rfind(b"\n") + 1)


@dataclass(frozen=True)
class Shown:
    """A pair as one labeller sees it: `order` "ab" puts response a on the left (A), "ba" on the right."""

    pair: Pair
    order: str

    @property
    def left(self) -> str:
        return self.pair.response_a if self.order == "ab" else self.pair.response_b

    @property
    def right(self) -> str:
        return self.pair.response_b if self.order == "ab" else self.pair.response_a


class Leases:
    """Which session holds which item: an item shown to one labeller is kept from the others for LEASE_SECONDS."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[str, float]] = {}  # item id -> (session, expiry)
        self.guard = threading.Lock()

    def take(self, ids: list[str], done: set[str], session: str) -> str | None:
        """The first of `ids` not done and not held by another session, now held by `session`."""
        now = time.monotonic()
        with self.guard:
            for item in ids:
                holder, expiry = self.held.get(item, (session, 0.0))
                if item not in done and (holder == session or expiry <= now):
                    self.held[item] = (session, now + LEASE_SECONDS)
                    return item
        return None

    def release(self, item: str) -> None:
        with self.guard:
            self.held.pop(item, None)


class LabellingQueue:
    """Hands out the next unlabelled pair to each labeller and records their labels."""

    def __init__(self, pairs: list[Pair], log: LabelLog, seed: int | None = None) -> None:
        self.pairs = {pair.pair_id: pair for pair in pairs}
        self.log = log
        self.leases = Leases()
        self.random = random.Random(seed)

    def progress(self) -> dict[str, int]:
        return {"labelled": len(self.log.labelled_ids() & self.pairs.keys()), "total": len(self.pairs)}

    def next_for(self, session: str) -> Shown | None:
        """The first pair no one has labelled and no other session holds, leased to `session`, sides shuffled."""
        pair_id = self.leases.take(list(self.pairs), self.log.labelled_ids(), session)
        return None if pair_id is None else Shown(self.pairs[pair_id], self.random.choice(("ab", "ba")))

    def record(self, pair_id: str, side: str, order: str, labeller: str) -> bool:
        """Store a label given on the page (`side`: left, right, tie or skip); False if the pair was labelled.

        Raises KeyError for a pair not in the queue.
        """
        pair = self.pairs[pair_id]
        winner = {"left": order[0], "right": order[1]}.get(side, side)
        row = {
            "pair_id": pair_id,
            "prompt": pair.prompt,
            "response_a": pair.response_a,
            "response_b": pair.response_b,
            "model_a": pair.model_a,
            "model_b": pair.model_b,
            "choice": winner,
            "left": order[0],
            "labeller": labeller,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        stored = self.log.append_once(row)
        self.leases.release(pair_id)
        return stored


def preference_rows(labels: list[dict]) -> list[dict]:
    """Human labels as preference pairs (prompt, chosen, rejected); ties and skips carry no preference."""
    rows = []
    for label in labels:
        if label["choice"] in ("a", "b"):
            loser = "b" if label["choice"] == "a" else "a"
            chosen, rejected = label[f"response_{label['choice']}"], label[f"response_{loser}"]
            rows.append({"prompt": label["prompt"], "chosen": chosen, "rejected": rejected})
    return rows
