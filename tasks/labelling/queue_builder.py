"""`rlhf label queue`: pairs for people to compare, sampled from two of the pipeline's models on held-out prompts.

For example SFT against the PPO candidate (models/sft, models/ppo), or two samples of one policy (the same folder
twice: the second side samples with another seed). New pairs are added to the queue; pairs already in it, and
their labels, stay.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rlhf_lib.config import ConfigError, DataConfig, ModelConfig
from rlhf_lib.data.formats import prompt_text
from rlhf_lib.data.sources import load_rows
from rlhf_lib.generation import generate_responses, sampling_dtype
from rlhf_lib.io import atomic_write_jsonl
from rlhf_lib.models.loading import load_language_model, load_tokenizer
from tasks.labelling.store import QUEUE_FILE, Pair, read_queue
from tasks.params import DATA_DIR, PipelineParams


def model_version(folder: Path) -> str:
    """`<folder>@<first 12 hex of the weights' sha256>`: which weights wrote a response, even after a retrain."""
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ConfigError(f"{folder}: no safetensors weights (train it first, e.g. `dvc repro`)")
    digest = hashlib.sha256()
    for path in weights:
        with path.open("rb") as handle:
            for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                digest.update(block)
    return f"{folder}@{digest.hexdigest()[:12]}"


def shown_prompt(row: dict) -> str:
    """What the labeller reads: a string prompt as it is, a conversation's turns one per paragraph."""
    prompt = row["prompt"] if "prompt" in row else row["messages"]
    if isinstance(prompt, str):
        return prompt
    turns = [m["content"] if m["role"] == "user" else f"[{m['role']}] {m['content']}" for m in prompt]
    return "\n\n".join(turns)


def build_queue(params: PipelineParams, first: Path, second: Path, count: int, queue_path: Path = QUEUE_FILE) -> int:
    """Sample both models on the first `count` evaluation prompts and add the pairs to the queue; returns how
    many pairs were new."""
    generation = params.evaluate.generation
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(first)))
    rows = load_rows(DataConfig(source=str(DATA_DIR / "eval_prompts.jsonl")))
    rows = [rows[i] for i in range(min(count, len(rows)))]
    prompts = [prompt_text(row, tokenizer) for row in rows]
    sides = {}
    for side, folder, seed in (("a", first, generation.seed), ("b", second, generation.seed + 1)):
        model = load_language_model(ModelConfig(name_or_path=str(folder)), sampling_dtype(generation)).eval()
        texts, _ = generate_responses(model, tokenizer, prompts, generation.model_copy(update={"seed": seed}))
        sides[side] = (texts, model_version(folder))
    queue = read_queue(queue_path) if queue_path.is_file() else []
    known = {pair.pair_id for pair in queue}
    added = 0
    for row, response_a, response_b in zip(rows, sides["a"][0], sides["b"][0], strict=True):
        prompt = shown_prompt(row)
        fields = [prompt, response_a, response_b, sides["a"][1], sides["b"][1]]
        pair_id = hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]
        if pair_id not in known:
            queue.append(Pair(pair_id, prompt, response_a, response_b, sides["a"][1], sides["b"][1]))
            known.add(pair_id)
            added += 1
    atomic_write_jsonl(queue_path, [vars(pair) for pair in queue])
    return added
