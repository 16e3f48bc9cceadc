"""TextEnvironment: rollouts in which the policy calls tools, and only its own tokens are trained.

The policy writes a call as `<call>name: query</call>`. Generation stops at the end of the call, the
environment runs the tool and appends `<result>answer</result>` as tokens, and generation resumes, until EOS,
`max_turns` calls or `max_length` response tokens. The episode is kept as token ids throughout (never decoded
and re-encoded), so the log-probs the update computes are those of the tokens the policy sampled, and
`action_mask` is 1 on those tokens only: prompt, tool answers and padding are 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_lib.models.decoding import fast_sampling
from rlhf_lib.sampling import Sampling
from rlhf_lib.tools import ToolBox

# The turn ends with the first `</call>`; its last token may carry a character or two past it (a tokenizer can merge
# `</call><` into one token), which stay: the policy sampled them.
CALL = re.compile(r"<call>\s*(?P<name>\w+)\s*:?\s*(?P<query>.*?)\s*</call>", re.DOTALL)


@dataclass
class Episode:
    """One episode's state as it plays out: its token ids so far, which of them the policy sampled, and counts."""

    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    action_mask: list[int] = field(default_factory=list)
    calls: int = 0
    turns: int = 0
    done: bool = False
    ended_with_eos: bool = False


@dataclass
class EnvironmentRollout:
    """A batch of tool-use episodes in the trainer's layout: left-padded prompt, then the response region."""

    input_ids: torch.Tensor
    """[B, P + R]: prompts left-padded to P, responses (policy and tool tokens) right-padded to R."""
    attention_mask: torch.Tensor
    """0 on prompt padding, 1 elsewhere (response padding is excluded through `action_mask`)."""
    prompt_width: int
    action_mask: torch.Tensor
    """[B, R]: 1 on tokens the policy generated, 0 on tool answers and padding."""
    contains_eos: torch.Tensor
    texts: list[str]
    """Each episode's response as text, tool answers included (what a reward reads the final answer from)."""
    response_lengths: list[int]
    """Each episode's response tokens (policy and tool), before the padding."""
    stats: dict[str, float]
    """Tool calls, errors and turns per episode, calls per tool, and the share of episodes ended by EOS."""


class TextEnvironment:
    """Runs episodes of `policy` with `tools` (a ToolBox) between its turns."""

    call_end = "</call>"

    def __init__(self, tools: ToolBox, max_turns: int = 3, max_length: int = 64) -> None:
        if max_turns < 0 or max_length < 1:
            raise ValueError(f"max_turns must be >= 0 and max_length >= 1, got {max_turns} and {max_length}")
        self.tools = tools
        self.max_turns = max_turns
        self.max_length = max_length

    @torch.no_grad()
    def run(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[str],
        sampling: Sampling,
        max_prompt_length: int | None = None,
    ) -> EnvironmentRollout:
        """Play one episode per prompt; prompts longer than `max_prompt_length` tokens keep their end."""
        tokenizer.truncation_side = "left"  # keep the end of a long prompt, next to the response
        truncate = max_prompt_length is not None
        encoded = tokenizer(prompts, truncation=truncate, max_length=max_prompt_length)
        episodes = [Episode(list(ids)) for ids in encoded["input_ids"]]
        errors_before = sum(self.tools.errors.values())
        calls_per_tool_before = dict(self.tools.calls)
        while active := [i for i, episode in enumerate(episodes) if not episode.done]:
            generated = self._generate(model, tokenizer, [episodes[i] for i in active], sampling)
            for i, new_ids in zip(active, generated, strict=True):
                self._take_turn(episodes[i], new_ids, tokenizer)
        rollout = self._collate(episodes, tokenizer)
        calls = [episode.calls for episode in episodes]
        # Per-episode means, then counts over the batch (`is_batch_count`), which vary in their keys.
        rollout.stats = {
            "env/tool_calls_per_episode": sum(calls) / len(calls),
            "env/tool_errors": float(sum(self.tools.errors.values()) - errors_before),
            "env/turns_per_episode": sum(e.turns for e in episodes) / len(episodes),
            "env/ended_with_eos": sum(e.ended_with_eos for e in episodes) / len(episodes),
        } | {
            f"env/calls/{name}": float(count - calls_per_tool_before.get(name, 0))
            for name, count in self.tools.calls.items()
        }
        return rollout

    def _generate(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, episodes: list[Episode], sampling: Sampling
    ) -> list[list[int]]:
        """One turn for each episode: its new tokens (the batch's padding after an early stop included)."""
        histories = [episode.prompt_ids + episode.response_ids for episode in episodes]
        width = max(map(len, histories))
        pad = tokenizer.pad_token_id
        device = next(model.parameters()).device
        input_ids = torch.tensor([[pad] * (width - len(h)) + h for h in histories], device=device)
        attention_mask = torch.tensor([[0] * (width - len(h)) + [1] * len(h) for h in histories], device=device)
        budget = max(self.max_length - len(episode.response_ids) for episode in episodes)
        # The policy's own model (inside a value-head wrapper) samples with LoRA merged and the small-rows kernel.
        with fast_sampling(getattr(model, "pretrained_model", model)):
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                tokenizer=tokenizer,
                **sampling.generate_kwargs(max_new_tokens=budget, stop_strings=[self.call_end]),
            )
        return output[:, width:].tolist()

    def _take_turn(self, episode: Episode, new_ids: list[int], tokenizer: PreTrainedTokenizerBase) -> None:
        """Keep the turn's tokens up to EOS, the end of a call, or the length budget; run a call's tool."""
        episode.turns += 1
        budget = self.max_length - len(episode.response_ids)
        eos = next((k for k, token in enumerate(new_ids) if token == tokenizer.eos_token_id), None)
        end = min(len(new_ids), budget) if eos is None else min(eos + 1, budget)
        history = episode.prompt_ids + episode.response_ids
        call_end = _end_of_first_call(history, new_ids[:end], tokenizer, self.call_end)
        kept = new_ids[: call_end or end]
        episode.response_ids += kept
        episode.action_mask += [1] * len(kept)
        budget -= len(kept)
        if call_end is None or budget <= 0 or episode.calls >= self.max_turns:
            episode.done = True
            episode.ended_with_eos = call_end is None and eos is not None and eos < end
            return
        episode.calls += 1
        # The episode's last complete call is this one; it may have begun in the prompt (a prompt can open a call).
        match = list(CALL.finditer(tokenizer.decode(history + kept, skip_special_tokens=True)))[-1:]
        if match:
            answer, _ = self.tools.call(match[0]["name"], match[0]["query"])
        else:
            answer, _ = self.tools.failed("call", "write <call>name: query</call>")
        result = tokenizer.encode(f"<result>{answer}</result>", add_special_tokens=False)[:budget]
        episode.response_ids += result
        episode.action_mask += [0] * len(result)
        if len(result) == budget:
            episode.done = True

    def _collate(self, episodes: list[Episode], tokenizer: PreTrainedTokenizerBase) -> EnvironmentRollout:
        pad = tokenizer.pad_token_id
        prompt_width = max(len(e.prompt_ids) for e in episodes)
        response_width = max(1, max(len(e.response_ids) for e in episodes))
        rows, attention, masks = [], [], []
        for e in episodes:
            left, right = prompt_width - len(e.prompt_ids), response_width - len(e.response_ids)
            rows.append([pad] * left + e.prompt_ids + e.response_ids + [pad] * right)
            attention.append([0] * left + [1] * (len(e.prompt_ids) + response_width))
            masks.append(e.action_mask + [0] * right)
        texts = [tokenizer.decode(e.response_ids, skip_special_tokens=True) for e in episodes]
        return EnvironmentRollout(
            input_ids=torch.tensor(rows),
            attention_mask=torch.tensor(attention),
            prompt_width=prompt_width,
            action_mask=torch.tensor(masks),
            contains_eos=torch.tensor([e.ended_with_eos for e in episodes]),
            texts=texts,
            response_lengths=[len(e.response_ids) for e in episodes],
            stats={},
        )


def _end_of_first_call(
    history: list[int], ids: list[int], tokenizer: PreTrainedTokenizerBase, call_end: str
) -> int | None:
    """How many of `ids` run up to and including the first `call_end` that ends among them (it may begin in the
    last tokens of `history`), or None if none does."""
    context = history[-len(call_end) :]  # a token holds at least one character, so these hold any partial call_end
    seen = max(len(tokenizer.decode(context)) - len(call_end) + 1, 0)  # a call_end found from here ends in `ids`
    if call_end not in tokenizer.decode(context + ids)[seen:]:
        return None
    for k in range(1, len(ids) + 1):
        if call_end in tokenizer.decode(context + ids[:k])[seen:]:
            return k
    return None


def is_batch_count(stat: str) -> bool:
    """Whether a rollout statistic counts over the batch (tool errors, calls per tool) rather than averages over
    its episodes: the processes of a data-parallel run add up counts and average the rest."""
    return stat == "env/tool_errors" or stat.startswith("env/calls/")
