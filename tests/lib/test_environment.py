"""TextEnvironment rollouts: a scripted policy calls tools; the action mask keeps tool answers out of the loss."""

from __future__ import annotations

import re

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


def test_a_ppo_step_trains_on_environment_episodes_and_logs_their_tool_figures(tiny_lm_dir, tmp_path):
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
