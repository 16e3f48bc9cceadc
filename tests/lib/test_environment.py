"""TextEnvironment rollouts: a scripted policy calls tools; the action mask keeps tool answers out of the loss."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from rlhf_lib.config import ModelConfig
from rlhf_lib.models.loading import load_causal_lm, load_tokenizer
from rlhf_lib.ppo.core import clipped_policy_loss, logprobs_of_labels
from rlhf_lib.ppo.environment import TextEnvironment
from rlhf_lib.sampling import Sampling
from rlhf_lib.tools import CALCULATOR, ToolBox

RESULT = re.compile(r"<result>.*?</result>", re.DOTALL)


class ScriptedPolicy(LogitsProcessor):
    """Forces each prompt's script of policy text, whatever the tools answer in between, then EOS."""

    def __init__(self, tokenizer, scripts: dict[str, str]) -> None:
        self.tokenizer, self.scripts = tokenizer, scripts

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -torch.inf)
        for row, ids in enumerate(input_ids.tolist()):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            prompt = next(p for p in self.scripts if text.startswith(p))
            written = RESULT.sub("", text[len(prompt) :])  # the policy's own text so far
            rest = self.scripts[prompt][len(written) :]
            token = self.tokenizer.encode(rest, add_special_tokens=False)[0] if rest else self.tokenizer.eos_token_id
            forced[row, token] = 0.0
        return forced


SCRIPTS = {
    "two calls:": "<call>calculator: 2+3</call><call>calculator: 5*4</call> so 20",
    "an error:": "<call>calculator: 2+x</call> no",
    "no call:": " just 7",
}


def _run(tmp_dir: str, max_turns: int = 3, max_length: int = 200):
    cfg = ModelConfig(name_or_path=tmp_dir)
    model, tokenizer = load_causal_lm(cfg).eval(), load_tokenizer(cfg)
    sampling = Sampling.create(1.0, 0, 1.0, 8, tokenizer.pad_token_id, tokenizer.eos_token_id)
    sampling = Sampling(1.0, sampling.generation_config, LogitsProcessorList([ScriptedPolicy(tokenizer, SCRIPTS)]))
    env = TextEnvironment(ToolBox([CALCULATOR]), max_turns=max_turns, max_length=max_length)
    return model, tokenizer, env, env.run(model, tokenizer, list(SCRIPTS), sampling, max_prompt_length=32)


def _spans(tokenizer, ids: list[int], mask: list[int], keep: int) -> list[str]:
    """The decoded runs of tokens whose mask is `keep`."""
    runs, current = [], []
    for token, m in zip(ids, mask, strict=True):
        if m == keep:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(run, skip_special_tokens=True) for run in [*runs, current] if run]


def test_tool_answers_are_inserted_and_masked_out_of_ragged_episodes(tiny_lm_dir):
    _, tokenizer, _, rollout = _run(tiny_lm_dir)
    responses = rollout.input_ids[:, rollout.prompt_width :].tolist()
    mask = rollout.action_mask.tolist()
    policy = [_spans(tokenizer, ids, m, 1) for ids, m in zip(responses, mask, strict=True)]
    tools = [
        _spans(tokenizer, ids[: len(m) - m[::-1].index(1)], m[: len(m) - m[::-1].index(1)], 0)
        for ids, m in zip(responses, mask, strict=True)
    ]
    assert policy[0] == ["<call>calculator: 2+3</call>", "<call>calculator: 5*4</call>", " so 20"]
    assert tools[0] == ["<result>5</result>", "<result>20</result>"]
    assert policy[1] == ["<call>calculator: 2+x</call>", " no"]
    assert len(tools[1]) == 1 and tools[1][0].startswith("<result>error: ValueError")
    assert policy[2] == [" just 7"] and tools[2] == []
    assert rollout.texts[0] == (
        "<call>calculator: 2+3</call><result>5</result><call>calculator: 5*4</call><result>20</result> so 20"
    )
    for row, m in enumerate(mask):  # each episode's last policy token is its EOS; padding after it is 0
        last = len(m) - 1 - m[::-1].index(1)
        assert responses[row][last] == tokenizer.eos_token_id and not any(m[last + 1 :])
    assert rollout.contains_eos.tolist() == [True, True, True]
    assert rollout.stats["env/tool_calls_per_episode"] == 1.0
    assert rollout.stats["env/tool_errors"] == 1.0 and rollout.stats["env/calls/calculator"] == 3.0
    assert rollout.stats["env/turns_per_episode"] == 2.0 and rollout.stats["env/ended_with_eos"] == 1.0


def test_max_turns_and_max_length_end_episodes_without_eos(tiny_lm_dir):
    _, _, _, rollout = _run(tiny_lm_dir, max_turns=1)
    assert rollout.texts[0] == "<call>calculator: 2+3</call><result>5</result><call>calculator: 5*4</call>"
    assert rollout.contains_eos.tolist() == [False, True, True]
    _, _, _, short = _run(tiny_lm_dir, max_length=6)
    assert short.action_mask.shape[1] == 6 and not short.contains_eos[0]


def test_the_policy_loss_sends_no_gradient_to_tool_answer_positions(tiny_lm_dir):
    model, _, _, rollout = _run(tiny_lm_dir)
    width = rollout.action_mask.shape[1]
    logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask).logits[:, -width - 1 : -1]
    logits.retain_grad()
    logprobs = logprobs_of_labels(logits, rollout.input_ids[:, -width:])
    advantages = torch.randn(logprobs.shape)
    loss, _ = clipped_policy_loss(logprobs, logprobs.detach(), advantages, rollout.action_mask, 0.2)
    loss.backward()
    per_position = logits.grad.abs().sum(-1)
    assert (per_position[rollout.action_mask == 0] == 0).all()
    assert (per_position[rollout.action_mask == 1] > 0).all()


def test_a_ppo_step_trains_on_environment_episodes_and_logs_their_tool_figures(
    tiny_lm_dir, tmp_path, default_precision
):
    from rlhf_lib.config import PPOConfig
    from rlhf_lib.models.value_head import AutoModelForCausalLMWithValueHead
    from rlhf_lib.ppo.trainer import PPOTrainer

    _, tokenizer, env, expected = _run(tiny_lm_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLMWithValueHead(load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir)))
    config = PPOConfig(output_dir=str(tmp_path), batch_size=3, num_mini_batches=1, ppo_epochs=1, total_steps=1)

    def right_answer(prompts: list[str], responses: list[str]) -> list[float]:
        return [float(response.endswith("20")) for response in responses]

    trainer = PPOTrainer(config, model, tokenizer, list(SCRIPTS), right_answer, environment=env)
    trainer.sampling = Sampling(
        1.0, trainer.sampling.generation_config, LogitsProcessorList([ScriptedPolicy(tokenizer, SCRIPTS)])
    )
    batch = trainer.rollout(list(SCRIPTS))
    assert torch.equal(batch.mask, expected.action_mask) and torch.equal(batch.input_ids, expected.input_ids)
    assert batch.scores.tolist() == [1.0, 0.0, 0.0]
    metrics = trainer.step(list(SCRIPTS))
    assert metrics["env/tool_calls_per_episode"] == 1.0 and metrics["env/calls/calculator"] == 3.0
    assert metrics["response_length"] == expected.action_mask.sum(1).float().mean().item()
    assert torch.isfinite(torch.tensor(metrics["loss/policy_avg"]))


PRIMED = ["2+3 is <call>calculator: 2+3</call", "6*7 is <call>calculator: 6*7</call", "9-4 is <call>calculator: 9-4"]
PRIMED[2] += "</call"  # every prompt opens a call; the policy closes it (or not) with its first token


def _answered(prompts: list[str], responses: list[str]) -> list[float]:
    """1 when the calculator answered, which needs the policy to close the call the prompt opened."""
    return [float("<result>" in response and "error" not in response) for response in responses]


def _closing_probabilities(model, tokenizer) -> torch.Tensor:
    """Each prompt's probability of `>` as the first response token: the chance that the policy calls the tool."""
    closing = tokenizer.encode(">", add_special_tokens=False)
    assert len(closing) == 1
    with torch.no_grad():
        logits = [model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1] for prompt in PRIMED]
    return torch.stack(logits).softmax(-1)[:, closing[0]]


def _tool_trainer(model_dir: str, out_dir, nudge: bool = False, **overrides):
    from rlhf_lib.config import PPOConfig
    from rlhf_lib.models.value_head import AutoModelForCausalLMWithValueHead
    from rlhf_lib.ppo.trainer import PPOTrainer

    tokenizer = load_tokenizer(ModelConfig(name_or_path=model_dir))
    torch.manual_seed(0)
    policy = load_causal_lm(ModelConfig(name_or_path=model_dir))
    if nudge:  # before the trainer copies the reference, as SFT comes before PPO
        _call_now_and_then(policy, tokenizer)
    settings = dict(
        output_dir=str(out_dir), batch_size=12, num_mini_batches=2, ppo_epochs=2, learning_rate=3e-3, save_steps=100
    )
    config = PPOConfig(**(settings | overrides))
    env = TextEnvironment(ToolBox([CALCULATOR]), max_turns=1, max_length=24)
    model = AutoModelForCausalLMWithValueHead(policy)
    return PPOTrainer(config, model, tokenizer, PRIMED, _answered, environment=env)


def _call_now_and_then(policy, tokenizer) -> None:
    """Like an SFT policy that calls the tool on some problems: P(`>` first) from ~1/400 to 0.1 or more."""
    closing = tokenizer.encode(">", add_special_tokens=False)[0]
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.05)
    while _closing_probabilities(policy, tokenizer).min() < 0.1:
        logits = torch.stack([policy(**tokenizer(p, return_tensors="pt")).logits[0, -1] for p in PRIMED])
        loss = torch.nn.functional.cross_entropy(logits, torch.full((len(PRIMED),), closing))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_ppo_learns_to_call_the_tool_when_the_reward_needs_its_answer(tiny_lm_dir, tmp_path, default_precision):
    trainer = _tool_trainer(tiny_lm_dir, tmp_path, nudge=True, total_steps=12)
    policy, tokenizer = trainer.policy.pretrained_model, trainer.tokenizer
    before = _closing_probabilities(policy, tokenizer)
    history = trainer.train()
    after = _closing_probabilities(policy, tokenizer)
    assert before.max() < 0.5 and after.min() > 0.7, (before, after)  # measured: 0.27-0.28 -> 0.83-0.86
    assert history[-1]["objective/scores"] > history[0]["objective/scores"]
    assert history[-1]["env/tool_calls_per_episode"] > history[0]["env/tool_calls_per_episode"]


def test_a_tool_use_run_resumes_mid_way_with_the_same_next_update(tiny_lm_dir, tmp_path, default_precision):
    import shutil

    from rlhf_lib.ppo.checkpoint import list_checkpoints

    straight = _tool_trainer(tiny_lm_dir, tmp_path / "a", total_steps=3, save_steps=2)
    history = straight.train()
    assert [p.name for p in list_checkpoints(tmp_path / "a" / "checkpoints")] == ["checkpoint-2", "checkpoint-3"]
    resumed = _tool_trainer(tiny_lm_dir, tmp_path / "b", total_steps=3, save_steps=2)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "checkpoint-2", tmp_path / "b" / "checkpoints" / "checkpoint-2")
    resumed_history = resumed.train()
    assert resumed.global_step == 3 and len(resumed_history) == 1
    for key in ("objective/scores", "env/tool_calls_per_episode", "response_length"):
        assert resumed_history[0][key] == history[2][key], key
    assert resumed_history[0]["loss/policy_avg"] == pytest.approx(history[2]["loss/policy_avg"], abs=1e-6)
