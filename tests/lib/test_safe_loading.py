"""Safe loading: safetensors only, no pickles beyond weights_only, no remote code unless asked."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf_lib.config import ModelConfig
from rlhf_lib.models.loading import load_causal_lm

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for folder in ("rlhf_lib", "tasks", "flows") for p in (ROOT / folder).rglob("*.py")]


def _calls(name: str):
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(name):
                yield path, node


def test_every_torch_load_is_weights_only():
    calls = list(_calls("torch.load"))
    assert calls, "the optimizer checkpoint is read with torch.load; this check must see it"
    for path, node in calls:
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        assert keywords.get("weights_only") == "True", f"{path.name}:{node.lineno} torch.load without weights_only"


def test_no_code_turns_trust_remote_code_on():
    for path, node in _calls("from_pretrained"):
        for keyword in node.keywords:
            assert not (keyword.arg == "trust_remote_code" and ast.unparse(keyword.value) == "True"), path.name
    assert ModelConfig(name_or_path="x").trust_remote_code is False


def test_a_pickled_checkpoint_is_refused(tiny_lm_dir, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_lm_dir, pickled)
    state = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).state_dict()
    torch.save(state, pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(OSError, match="safetensors|model.safetensors"):
        load_causal_lm(ModelConfig(name_or_path=str(pickled)))


def test_repository_code_does_not_run_without_trust_remote_code(tiny_lm_dir, tmp_path):
    folder = tmp_path / "with_code"
    shutil.copytree(tiny_lm_dir, folder)
    marker = tmp_path / "code_ran"
    (folder / "evil_modeling.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil_modeling.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    try:
        load_causal_lm(ModelConfig(name_or_path=str(folder)))
    except ValueError as err:  # transformers may refuse outright; either way nothing from the folder runs
        assert "trust_remote_code" in str(err)
    assert not marker.exists()
