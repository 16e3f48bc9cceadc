"""Human reward during PPO: each batch's responses go to the rating page (`rlhf label serve`, /rate), people rate
them from 1 to 5, and the `human` reward source waits for the ratings.

Requests and ratings are JSONL files in data/human keyed by a hash of prompt and response. A killed and restarted
run resamples the same batches from its checkpoint, so it finds every rating already given and asks for none twice.
Meant for small, supervised experiments: a person rates about one response every few seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from rlhf_lib.errors import RewardUnavailable
from tasks.labelling.store import HUMAN_DIR, LabelLog, Leases, read_labels

REQUESTS_FILE = HUMAN_DIR / "rating_requests.jsonl"
RATINGS_FILE = HUMAN_DIR / "ratings.jsonl"
POLL_SECONDS = 0.5
logger = logging.getLogger(__name__)


def item_id(prompt: str, response: str) -> str:
    return hashlib.sha256(json.dumps([prompt, response]).encode()).hexdigest()[:16]


def rating_score(rating: int) -> float:
    """1..5 to -1..1: 3 (neither good nor bad) scores zero."""
    return (rating - 3) / 2


class HumanRatings:
    """The `human` reward source: ask for the responses' ratings, wait for them, return their scores."""

    def __init__(self, name: str, folder: Path, timeout_s: float, skip_on_timeout: bool) -> None:
        self.name, self.timeout_s, self.skip_on_timeout = name, timeout_s, skip_on_timeout
        self.requests = LabelLog(folder / REQUESTS_FILE.name, key="item_id")
        self.ratings_path = folder / RATINGS_FILE.name

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        ids = [item_id(prompt, response) for prompt, response in zip(prompts, responses, strict=True)]
        asked = self.requests.labelled_ids()
        for item, prompt, response in zip(ids, prompts, responses, strict=True):
            if item not in asked:
                self.requests.append_once({"item_id": item, "prompt": prompt, "response": response})
        deadline = time.monotonic() + self.timeout_s
        waiting_said = False
        while True:
            rated = {row["item_id"]: row["rating"] for row in read_labels(self.ratings_path)}
            missing = [item for item in ids if item not in rated]
            if not missing:
                return [rating_score(rated[item]) for item in ids]
            if not waiting_said:
                logger.warning(
                    "%s: waiting up to %.0f s for %d of %d responses to be rated on the rating page (/rate)",
                    self.name,
                    self.timeout_s,
                    len(missing),
                    len(ids),
                )
                waiting_said = True
            if time.monotonic() >= deadline:
                problem = f"{self.name}: {len(missing)} of {len(ids)} responses not rated within {self.timeout_s:.0f} s"
                raise RewardUnavailable(problem, skip=self.skip_on_timeout)
            time.sleep(POLL_SECONDS)


class RatingQueue:
    """The responses PPO asked about, handed to raters one at a time; re-read on every request, as PPO adds more."""

    def __init__(self, requests: Path = REQUESTS_FILE, ratings: Path = RATINGS_FILE) -> None:
        self.requests_path = requests
        self.log = LabelLog(ratings, key="item_id")
        self.leases = Leases()

    def requested(self) -> dict[str, dict]:
        return {row["item_id"]: row for row in read_labels(self.requests_path)}

    def progress(self) -> dict[str, int]:
        requested = self.requested()
        return {"rated": len(self.log.labelled_ids() & requested.keys()), "requested": len(requested)}

    def next_for(self, session: str) -> dict | None:
        requested = self.requested()
        item = self.leases.take(list(requested), self.log.labelled_ids(), session)
        return None if item is None else requested[item]

    def record(self, item: str, rating: int, rater: str) -> bool:
        """Store a rating; False if the item was rated already. Raises KeyError for an item never requested."""
        request = self.requested()[item]
        row = request | {"rating": rating, "rater": rater, "time": datetime.now(UTC).isoformat(timespec="seconds")}
        stored = self.log.append_once(row)
        self.leases.release(item)
        return stored
