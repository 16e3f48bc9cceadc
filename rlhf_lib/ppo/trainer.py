"""PPO with a KL penalty against a frozen reference, read top to bottom in `step`:
rollout -> reward -> KL-penalised rewards -> GAE -> clipped policy and value updates.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_lib.allocator import keep_freed_memory
from rlhf_lib.callbacks import MetricsSink
from rlhf_lib.config import PPOConfig
from rlhf_lib.errors import NonFiniteError, RewardUnavailable
from rlhf_lib.models.value_head import ModelWithValueHead
from rlhf_lib.ppo.checkpoint import list_checkpoints, load_checkpoint, prune_checkpoints, save_checkpoint
from rlhf_lib.ppo.core import (
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    entropy_from_logits,
    kl_penalised_rewards,
    kl_per_token,
    masked_mean,
    masked_whiten,
    response_mask_until_eos,
)
from rlhf_lib.ppo.environment import TextEnvironment
from rlhf_lib.ppo.kl_control import KLController
from rlhf_lib.ppo.rollout import (
    Rollout,
    reference_logprobs,
    response_logprobs_and_values,
    sample_responses,
)
from rlhf_lib.precision import cast_frozen_weights, use_bf16
from rlhf_lib.rewards import RewardFunction, checked_scores
from rlhf_lib.sampling import Sampling

CHECKPOINTS_TO_KEEP = 2
logger = logging.getLogger(__name__)


def _accelerator(bf16: bool) -> Accelerator:
    """An Accelerator in this trainer's precision, whatever trainers came before it in this process.

    accelerate keeps one process-wide AcceleratorState and refuses a second precision in it. Drop that state
    first, as transformers' TrainingArguments does, but keep PartialState, which holds the process group of a
    distributed run. What an earlier trainer already prepared keeps its own precision (its forward was
    wrapped at prepare time, and it autocasts by its own flag).
    """
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision="bf16" if bf16 else "no")


class PPOTrainer:
    """Optimises a policy with a value head against a reward function, with KL to the reference.

    The policy is causal or an encoder-decoder (`AutoModelForSeq2SeqLMWithValueHead`): the rollout follows its
    kind, and everything after it is shared. With a LoRA policy the reference is the same base with adapters
    disabled (one copy of the weights); otherwise a frozen copy of the policy at construction time is used.
    """

    def __init__(
        self,
        config: PPOConfig,
        model: ModelWithValueHead,
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[str],
        reward_fn: RewardFunction,
        ref_model: PreTrainedModel | None = None,
        metrics_sink: MetricsSink | None = None,
        eval_prompts: list[str] | None = None,
        judges: dict[str, RewardFunction] | None = None,
        environment: TextEnvironment | None = None,
    ) -> None:
        if not prompts:
            raise ValueError("PPO needs at least one prompt")
        if config.eval_steps and not eval_prompts:
            raise ValueError("eval_steps is set, but the trainer has no eval_prompts to evaluate on")
        if environment is not None and model.is_encoder_decoder:
            raise ValueError("tool-use episodes (environment) need a causal policy; this one is an encoder-decoder")
        self.config = config
        self.eval_prompts = eval_prompts or []
        self.judges = judges or {}
        self.environment = environment
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.reward_fn = reward_fn
        self.metrics_sink = metrics_sink
        self.output_dir = Path(config.output_dir)
        set_seed(config.seed)
        if not torch.cuda.is_available():
            keep_freed_memory()
        self.bf16 = bf16 = use_bf16(config.bf16)
        self.accelerator = _accelerator(bf16)
        if ref_model is None and not model.is_peft:
            ref_model = copy.deepcopy(model.pretrained_model)
        self.ref_model = ref_model.eval().requires_grad_(False).to(self.accelerator.device) if ref_model else None
        if bf16:
            # Frozen weights need no fp32 master copy: in bf16 they take half the memory, and a forward
            # through them (generation with a LoRA policy, the reference) skips autocast's weight casts.
            cast_frozen_weights(model, torch.bfloat16)
            if self.ref_model is not None:
                self.ref_model.to(torch.bfloat16)
        model.eval()  # no dropout: old and new log-probs must come from the same function
        # fused: one kernel over all parameters instead of a loop of per-tensor ops (3.5x faster on CPU).
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, fused=True
        )
        total_updates = config.total_steps * config.ppo_epochs * config.num_mini_batches
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: 1.0 - update / total_updates)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.kl_ctl = KLController(config.kl_coef, config.adaptive_kl_target, config.adaptive_kl_horizon)
        self.sampling = Sampling.create(
            config.temperature,
            config.top_k,
            config.top_p,
            config.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        self.global_step = 0
        self.skipped_batches = 0

    @property
    def policy(self) -> ModelWithValueHead:
        return self.accelerator.unwrap_model(self.model)

    def autocast(self) -> torch.autocast:
        """bf16 autocast if this trainer runs in bf16, else a no-op; read from the trainer, not accelerate's
        process-wide state, which a trainer built later may have changed."""
        return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    # ---- data position -------------------------------------------------------------------------
    def prompts_for_step(self, step: int) -> list[str]:
        """The prompts of iteration `step`: a seeded permutation per pass, so resume needs only `step`."""
        size, n = self.config.batch_size, len(self.prompts)
        picked, orders = [], {}  # one permutation per pass touched (a batch can straddle two)
        for position in range(step * size, (step + 1) * size):
            epoch, offset = divmod(position, n)
            if epoch not in orders:
                orders[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed + epoch))
            picked.append(self.prompts[orders[epoch][offset]])
        return picked

    # ---- one PPO iteration ---------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> Rollout:
        cfg, tokenizer = self.config, self.tokenizer
        if self.environment is not None:
            return self._environment_rollout(prompts)
        # Autocast speeds up sampling from fp32 weights (full fine-tuning: 1.55 s vs 1.93 s a batch in the PPO
        # benchmark); a LoRA policy's base is bf16 already and autocast only adds casts (2.07 s vs 1.83 s).
        with nullcontext() if self.policy.is_peft else self.autocast():
            sampled = sample_responses(
                self.policy,
                tokenizer,
                prompts,
                cfg.max_prompt_length,
                self.sampling,
                record_policy=cfg.logprobs_from_generation,
            )
        responses = sampled.response_ids
        mask = response_mask_until_eos(responses, tokenizer.eos_token_id)
        contains_eos = (responses == tokenizer.eos_token_id).any(1)
        texts = tokenizer.batch_decode(
            [row[: int(n)] for row, n in zip(responses, mask.sum(1), strict=True)], skip_special_tokens=True
        )
        return self._scored_rollout(
            prompts, sampled.input_ids, sampled.attention_mask, responses, mask, contains_eos, texts, sampled.recorded
        )

    def _environment_rollout(self, prompts: list[str]) -> Rollout:
        """Episodes with tool calls: log-probs and values come from one forward over the kept token ids."""
        with nullcontext() if self.policy.is_peft else self.autocast():
            env = self.environment.run(
                self.policy, self.tokenizer, prompts, self.sampling, self.config.max_prompt_length
            )
        device = self.accelerator.device
        input_ids = env.input_ids.to(device)
        rollout = self._scored_rollout(
            prompts,
            input_ids,
            env.attention_mask.to(device),
            input_ids[:, env.prompt_width :],
            env.action_mask.to(device),
            env.contains_eos.to(device),
            env.texts,
            recorded=None,
        )
        rollout.environment_stats = env.stats
        return rollout

    def _scored_rollout(
        self,
        prompts: list[str],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_ids: torch.Tensor,
        mask: torch.Tensor,
        contains_eos: torch.Tensor,
        texts: list[str],
        recorded: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> Rollout:
        """Score the responses, and add log-probs, values and reference log-probs at the response positions."""
        cfg = self.config
        raw_scores = self.reward_fn(prompts, texts)
        scores = torch.tensor(raw_scores, dtype=torch.float32, device=input_ids.device)
        if scores.shape != (len(prompts),):
            raise ValueError(f"reward function returned {tuple(scores.shape)} scores for {len(prompts)} responses")
        # A WeightedReward also hands back each source's scores, logged as reward/<source>.
        components = {name: sum(values) / len(values) for name, values in getattr(raw_scores, "components", {}).items()}
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~contains_eos).float()
        if recorded is None:
            logprobs, values, _ = response_logprobs_and_values(
                self.model, input_ids, attention_mask, response_ids, cfg.temperature
            )
        else:
            logprobs, values = recorded
        with self.autocast():
            ref_logprobs = reference_logprobs(
                self.policy, self.ref_model, input_ids, attention_mask, response_ids, cfg.temperature
            )
        return Rollout(
            input_ids,
            attention_mask,
            response_ids,
            mask,
            logprobs.float(),
            ref_logprobs.float(),
            values.float(),
            scores,
            contains_eos,
            texts,
            components,
        )

    def step(self, prompts: list[str]) -> dict[str, float] | None:
        """Sample, score and update once; returns this iteration's metrics, or None if it was skipped."""
        cfg = self.config
        started = time.perf_counter()
        sampling_state = torch.get_rng_state()
        try:
            batch = self.rollout(prompts)
        except RewardUnavailable as err:
            if err.skip:
                self.skipped_batches += 1
                logger.warning(
                    "PPO step %d: %s; skipped (%d skipped so far)", self.global_step + 1, err, self.skipped_batches
                )
                return None
            torch.set_rng_state(sampling_state)  # the checkpoint resumes by sampling this same batch again
            path = self.save_checkpoint()
            raise RewardUnavailable(f"PPO step {self.global_step + 1}: {err}; resume from {path}", skip=False) from err
        if not self._finite_or_skip("reward scores", batch.scores):
            return None
        mask = batch.mask
        kl = kl_per_token(batch.logprobs, batch.ref_logprobs, cfg.kl_estimator) * mask
        rewards = kl_penalised_rewards(batch.scores, kl, self.kl_ctl.value, mask)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = compute_gae(rewards, batch.values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
        if not self._finite_or_skip("advantages", advantages):
            return None

        stats: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            for index in torch.randperm(len(prompts)).split(cfg.mini_batch_size):
                for key, value in (self._update(batch, index, advantages, returns) or {}).items():
                    stats.setdefault(key, []).append(value)

        sequence_kl = kl.sum(1).mean().item()
        non_score_reward = (-self.kl_ctl.value * kl).sum(1).mean().item()
        metrics = {f"{key}_avg": sum(values) / len(values) for key, values in stats.items()}
        metrics |= {
            "objective/kl": sequence_kl,
            "objective/entropy": (-batch.logprobs * mask).sum(1).mean().item(),
            "objective/non_score_reward": non_score_reward,
            "objective/scores": batch.scores.mean().item(),
            "objective/rlhf_reward": batch.scores.mean().item() + non_score_reward,
            "objective/kl_coef": self.kl_ctl.value,
            "val/num_eos_tokens": batch.contains_eos.sum().item(),
            "response_length": mask.sum(1).float().mean().item(),
            "lr": self.scheduler.get_last_lr()[0],
            "eps": len(prompts) / (time.perf_counter() - started),
            "skipped_batches": self.skipped_batches,
        }
        metrics |= {f"reward/{name}": value for name, value in batch.score_components.items()}
        metrics |= batch.environment_stats
        self.kl_ctl.update(sequence_kl, len(prompts))
        return metrics

    def _update(self, batch: Rollout, index: torch.Tensor, advantages, returns) -> dict[str, float] | None:
        """One clipped update on a minibatch; None (and no weight change) if its loss or gradient was non-finite."""
        cfg, mask = self.config, batch.mask[index]
        logprobs, values, logits = response_logprobs_and_values(
            self.model, batch.input_ids[index], batch.attention_mask[index], batch.response_ids[index], cfg.temperature
        )
        policy_loss, policy_stats = clipped_policy_loss(
            logprobs.float(), batch.logprobs[index], advantages[index], mask, cfg.cliprange
        )
        value_loss, value_clipfrac = clipped_value_loss(
            values.float(), batch.values[index], returns[index], mask, cfg.cliprange_value
        )
        loss = policy_loss + cfg.vf_coef * value_loss
        if not self._finite_or_skip("loss", loss):
            return None
        self.accelerator.backward(loss)
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        if not self._finite_or_skip("gradient norm", grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss/policy": policy_loss.item(),
            "loss/value": value_loss.item(),
            "policy/approxkl": policy_stats["approxkl"].item(),
            "policy/clipfrac": policy_stats["clipfrac"].item(),
            "policy/entropy": masked_mean(entropy_from_logits(logits.detach()), mask).item(),
            "val/clipfrac": value_clipfrac.item(),
            "val/ratio": policy_stats["ratio"].item(),
        }

    def _finite_or_skip(self, what: str, tensor: torch.Tensor) -> bool:
        """True if `tensor` is finite; else count a skip (skip_nonfinite_batches) or raise NonFiniteError."""
        if torch.isfinite(tensor).all():
            return True
        problem = f"non-finite {what} at PPO step {self.global_step + 1}"
        if not self.config.skip_nonfinite_batches:
            raise NonFiniteError(
                f"{problem}; the last good checkpoint in {self.output_dir / 'checkpoints'} is left as it was "
                "(set skip_nonfinite_batches to skip such batches instead)"
            )
        self.skipped_batches += 1
        logger.warning("%s: skipped (%d skipped so far)", problem, self.skipped_batches)
        return False

    @torch.no_grad()
    def held_out_metrics(self) -> dict[str, float]:
        """The reward, each judge and the KL to the reference on the held-out prompts.

        Logged over training, these are Gao et al. (2022)'s curves: reward hacking shows as the reward rising while
        the judges fall. The reward is the one PPO optimises, missing-EOS penalty included (the `evaluate` stage's
        proxy reward leaves the penalty out). The same sampling noise every time (a fixed seed) keeps the curves
        comparable step to step, and the training's random state is left as it was, so a run trains the same with or
        without them.
        """
        device = self.accelerator.device
        # The CPU generator is always forked; devices=[] skips the accelerator ones, which a CPU run does not have.
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else None, device_type=device.type):
            torch.manual_seed(self.config.seed)
            batch = self.rollout(self.eval_prompts)
        kl = kl_per_token(batch.logprobs, batch.ref_logprobs, "k1") * batch.mask
        metrics = {"held_out/reward": batch.scores.mean().item(), "held_out/kl": kl.sum(1).mean().item()}
        for name, judge in self.judges.items():
            scores = checked_scores(name, judge, self.eval_prompts, batch.responses)
            metrics[f"held_out/judge/{name}"] = sum(scores) / len(scores)
        return metrics

    # ---- loop, checkpoints, final save ---------------------------------------------------------
    def train(self, resume: bool = True) -> list[dict[str, float]]:
        """Run to `total_steps`, resuming from the newest checkpoint when `resume`.

        Returns the metrics of each step this call ran (each with its `step`), skipped batches left out.
        """
        if resume and (checkpoints := list_checkpoints(self.output_dir / "checkpoints")):
            self.load_checkpoint(checkpoints[-1])
        if self.config.eval_steps and self.global_step == 0 and self.metrics_sink:
            # The curves' first point: the starting policy, at KL 0.
            self.metrics_sink({f"ppo/{k}": v for k, v in self.held_out_metrics().items()}, 0)
        history = []
        progress = tqdm(
            total=self.config.total_steps, initial=self.global_step, desc="PPO", unit="step", dynamic_ncols=True
        )
        while self.global_step < self.config.total_steps:
            metrics = self.step(self.prompts_for_step(self.global_step))
            self.global_step += 1
            progress.update(1)
            if metrics is not None:  # None: a skipped batch, counted in skipped_batches
                if self.config.eval_steps and self.global_step % self.config.eval_steps == 0:
                    metrics |= self.held_out_metrics()
                metrics["step"] = self.global_step
                history.append(metrics)
                progress.set_postfix(score=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.3f}")
            if metrics and self.metrics_sink and self.global_step % self.config.logging_steps == 0:
                self.metrics_sink({f"ppo/{k}": v for k, v in metrics.items() if math.isfinite(v)}, self.global_step)
            if self.global_step % self.config.save_steps == 0 or self.global_step == self.config.total_steps:
                self.save_checkpoint()
        progress.close()
        return history

    def save_checkpoint(self) -> Path:
        folder = self.output_dir / "checkpoints"
        path = folder / f"checkpoint-{self.global_step}"
        state = {
            "global_step": self.global_step,
            "kl_coef": self.kl_ctl.value,
            "num_prompts": len(self.prompts),
            "skipped_batches": self.skipped_batches,
        }
        save_checkpoint(path, self.policy, self.optimizer, self.scheduler, state)
        prune_checkpoints(folder, CHECKPOINTS_TO_KEEP)
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = load_checkpoint(path, self.policy, self.optimizer, self.scheduler)
        if state["num_prompts"] != len(self.prompts):
            raise ValueError(
                f"checkpoint {path} was made with {state['num_prompts']} prompts, this run has {len(self.prompts)}:"
                " the data changed, so the run cannot resume where it stopped"
            )
        self.global_step = state["global_step"]
        self.kl_ctl.value = state["kl_coef"]
        self.skipped_batches = state.get("skipped_batches", 0)

    def save_policy(self, path: str | Path) -> None:
        """Save the trained policy as a standalone model (LoRA merged), value head and tokenizer."""
        policy = self.policy
        if policy.is_peft:
            # Merge in fp32: a small LoRA update added to bf16 base weights would round away.
            trunk = copy.deepcopy(policy.pretrained_model).float().merge_and_unload()
            policy = type(policy)(trunk, policy.v_head)
        policy.save_pretrained(path, tokenizer=self.tokenizer)
