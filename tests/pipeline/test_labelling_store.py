"""The labelling queue and labels file without a server: side order, leases, torn lines, preference rows."""

from __future__ import annotations

import json

import pytest

from rlhf_lib.config import ConfigError
from tasks.labelling import store
from tasks.labelling.store import LabellingQueue, LabelLog, Pair, preference_rows, read_labels, read_queue


def _queue(count: int) -> list[Pair]:
    return [Pair(f"p{i}", f"prompt {i}", f"a{i}", f"b{i}", "m@a", "m@b") for i in range(count)]


def test_sides_are_shuffled_about_evenly(tmp_path):
    queue = LabellingQueue(_queue(1), LabelLog(tmp_path / "labels.jsonl"), seed=0)
    orders = [queue.next_for("s").order for _ in range(400)]
    assert 160 < orders.count("ab") < 240  # 4.0 standard deviations either side of 200


def test_a_pair_held_by_one_labeller_goes_to_another_only_after_its_lease(tmp_path, monkeypatch):
    queue = LabellingQueue(_queue(2), LabelLog(tmp_path / "labels.jsonl"))
    assert queue.next_for("ada").pair.pair_id == "p0"
    assert queue.next_for("ada").pair.pair_id == "p0"  # a reload shows the same pair again
    assert queue.next_for("bob").pair.pair_id == "p1"
    assert queue.next_for("cy") is None
    monkeypatch.setattr(store.time, "monotonic", lambda: 1e12)  # every lease has expired
    assert queue.next_for("cy").pair.pair_id == "p0"


def test_a_label_maps_the_chosen_side_to_its_response_and_is_stored_once(tmp_path):
    queue = LabellingQueue(_queue(2), LabelLog(tmp_path / "labels.jsonl"))
    assert queue.record("p0", "left", "ba", "ada")  # b was on the left
    assert not queue.record("p0", "right", "ab", "bob")
    assert queue.record("p1", "tie", "ab", "ada")
    labels = read_labels(tmp_path / "labels.jsonl")
    assert [(label["choice"], label["left"], label["labeller"]) for label in labels] == [
        ("b", "b", "ada"),
        ("tie", "a", "ada"),
    ]
    assert preference_rows(labels) == [{"prompt": "prompt 0", "chosen": "b0", "rejected": "a0"}]
    with pytest.raises(KeyError):
        queue.record("p9", "left", "ab", "ada")


def test_a_line_cut_short_by_a_crash_is_not_a_label_and_the_next_label_starts_clean(tmp_path):
    path = tmp_path / "labels.jsonl"
    whole = json.dumps({"pair_id": "p0", "choice": "a"})
    path.write_text(whole + "\n" + '{"pair_id": "p1", "cho')
    assert [label["pair_id"] for label in read_labels(path)] == ["p0"]
    queue = LabellingQueue(_queue(2), LabelLog(path))
    assert queue.progress() == {"labelled": 1, "total": 2}
    assert queue.record("p1", "right", "ab", "ada")
    lines = path.read_text().splitlines()
    assert lines[0] == whole and json.loads(lines[1])["choice"] == "b" and len(lines) == 2


def test_a_malformed_queue_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "queue.jsonl"
    row = {"pair_id": "p0", "prompt": "x", "response_a": "a", "response_b": "b", "model_a": "m", "model_b": "m"}
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ConfigError, match=r"queue.jsonl:2: pair id 'p0' appears twice"):
        read_queue(path)
    path.write_text(json.dumps({"pair_id": "p0"}) + "\n")
    with pytest.raises(ConfigError, match=r"queue.jsonl:1: not a pair"):
        read_queue(path)
    with pytest.raises(ConfigError, match="rlhf label queue"):
        read_queue(tmp_path / "missing.jsonl")
