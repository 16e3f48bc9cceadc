"""The `pairs` stage's refusals and its skip (the pairs themselves: the qa recipe's smoke run, test_recipe_smoke)."""

from __future__ import annotations

import json

import pytest
import yaml

from rlhf_lib.config import ConfigError
from tasks import pairs
from tasks.params import params_from_text
from tests.pipeline.smoke_project import REPO_ROOT


def _params(policy_pairs: dict | None):
    params = yaml.safe_load((REPO_ROOT / "profiles/smoke.yaml").read_text())
    params["policy_pairs"] = policy_pairs
    return params_from_text(yaml.safe_dump(params))


def test_without_policy_pairs_the_stage_writes_an_empty_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/policy_pairs.jsonl").write_text('{"stale": 1}\n')  # an earlier run's pairs go
    assert pairs.run(_params(None)) == {"pairs/skipped": 1.0}
    assert (tmp_path / "data/policy_pairs.jsonl").read_text() == ""
    assert "pairs: none written, policy_pairs is not set" in capsys.readouterr().out


def test_pairs_without_a_prompt_are_refused_before_any_model_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/prepared").mkdir(parents=True)
    implicit = [{"chosen": f"question {i} answer", "rejected": f"question {i} other"} for i in range(10)]
    (tmp_path / "data/prepared/preference.jsonl").write_text("".join(json.dumps(row) + "\n" for row in implicit))
    with pytest.raises(ConfigError, match="has no `prompt` column .* set policy_pairs to null"):
        pairs.run(_params({"samples_per_prompt": 2}))  # no models/sft here: refused first
    assert not (tmp_path / "data/policy_pairs.jsonl").exists()


def test_bad_policy_pairs_settings_name_the_key():
    with pytest.raises(ConfigError, match="policy_pairs.min_gap"):
        _params({"min_gap": 0})
    with pytest.raises(ConfigError, match="policy_pairs.metric"):
        _params({"metric": "bleu"})
