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
from accelerate.utils import DistributedType, gather_object, set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_lib.allocator import keep_freed_memory
from rlhf_lib.callbacks import MetricsSink
from rlhf_lib.config import PPOConfig
from rlhf_lib.errors import NonFiniteError, RewardUnavailable
from rlhf_lib.models.value_head import ModelWithValueHead
from rlhf_lib.ppo.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    rng_states,
    save_checkpoint,
)
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
from rlhf_lib.ppo.data_parallel import DataParallel
from rlhf_lib.ppo.environment import TextEnvironment, is_batch_count
from rlhf_lib.ppo.kl_control import KLController
from rlhf_lib.ppo.rollout import (
    Rollout,
    reference_logprobs,
    response_logprobs_and_values,
    sample_responses,
)
from rlhf_lib.precision import cast_frozen_weights, use_bf16
from rlhf_lib.processes import enter_launched_run
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
    return Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=enter_launched_run())


class PPOTrainer:
    """Optimises a policy with a value head against a reward function, with KL to the reference.

    The policy is causal or an encoder-decoder (`AutoModelForSeq2SeqLMWithValueHead`): the rollout follows its
    kind, and everything after it is shared. With a LoRA policy the reference is the same base with adapters
    disabled (one copy of the weights); otherwise a frozen copy of the policy at construction time is used.

    Under `accelerate launch` with N processes, `batch_size` is the global batch: each process samples and
    scores its own B/N prompts of every step, whitening and metrics use the whole batch's statistics, the
    gradients are averaged by accelerate's DistributedDataParallel, and only the main process writes.
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
        if not torch.cuda.is_available():
            keep_freed_memory()
        self.bf16 = bf16 = use_bf16(config.bf16)
        self.accelerator = _accelerator(bf16)
        self.processes = DataParallel(self.accelerator)
        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise ValueError(
                f"PPO runs data parallel (DDP) only, not under {self.accelerator.distributed_type.value}: its rollouts "
                "generate with the whole policy on each device. Launch it with configs/accelerate/multi_gpu.yaml "
                "(launch.stages without ppo keeps FSDP/DeepSpeed for the other stages), or train a LoRA adapter"
            )
        if config.batch_size % (config.num_mini_batches * self.processes.size):
            raise ValueError(
                f"batch_size ({config.batch_size}) must be divisible by num_mini_batches x processes "
                f"({config.num_mini_batches} x {self.processes.size}): every process takes an equal share of "
                "every minibatch"
            )
        if config.eval_steps and len(self.eval_prompts) < self.processes.size:
            raise ValueError(
                f"{len(self.eval_prompts)} eval_prompts cannot be shared between {self.processes.size} processes"
            )
        set_seed(config.seed, device_specific=True)  # each process samples with noise of its own
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
        # The scheduler stays outside accelerate: its wrapper steps a scheduler once per process at every update,
        # for dataloaders whose length was divided between the processes; PPO's update count does not shrink.
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
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
            # The unwrapped policy: a forward of the DistributedDataParallel wrapper may sync buffers between
            # processes, which is wanted only in the update, where every process runs the same forwards.
            logprobs, values, _ = response_logprobs_and_values(
                self.policy, input_ids, attention_mask, response_ids, cfg.temperature
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
        """Sample, score and update once on this process's share of `prompts` (all of them with one process);
        returns the iteration's metrics over the whole batch, or None if it was skipped."""
        cfg = self.config
        started = time.perf_counter()
        sampling_state = torch.get_rng_state()
        local_prompts = self.processes.shard(prompts)
        failure = None
        try:
            batch = self.rollout(local_prompts)
        except RewardUnavailable as err:
            failure = err
        # Every process takes the same branch: 0 scored, 1 skip the batch, 2 stop.
        outcome = self.processes.largest(0 if failure is None else 1 if failure.skip else 2)
        if outcome == 1:
            self.skipped_batches += 1
            logger.warning(
                "PPO step %d: %s; skipped (%d skipped so far)",
                self.global_step + 1,
                failure or "no reward on another process",
                self.skipped_batches,
            )
            return None
        if outcome == 2:
            torch.set_rng_state(sampling_state)  # the checkpoint resumes by sampling this same batch again
            path = self.save_checkpoint()
            reason = failure or "no reward on another process"
            raise RewardUnavailable(
                f"PPO step {self.global_step + 1}: {reason}; resume from {path}", skip=False
            ) from failure
        if not self._finite_or_skip("reward scores", batch.scores):
            return None
        mask = batch.mask
        kl = kl_per_token(batch.logprobs, batch.ref_logprobs, cfg.kl_estimator) * mask
        rewards = kl_penalised_rewards(batch.scores, kl, self.kl_ctl.value, mask)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False, sum_across=self.processes.sum)
        advantages, returns = compute_gae(rewards, batch.values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask, sum_across=self.processes.sum)
        if not self._finite_or_skip("advantages", advantages):
            return None

        stats: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            for index in torch.randperm(len(local_prompts)).split(len(local_prompts) // cfg.num_mini_batches):
                for key, value in (self._update(batch, index, advantages, returns) or {}).items():
                    stats.setdefault(key, []).append(value)

        # Per-episode means of equal shards: their mean over the processes is the whole batch's mean.
        environment = batch.environment_stats
        episode_means = self.processes.means(
            {
                "objective/kl": kl.sum(1).mean().item(),
                "objective/entropy": (-batch.logprobs * mask).sum(1).mean().item(),
                "objective/scores": batch.scores.mean().item(),
                "response_length": mask.sum(1).float().mean().item(),
            }
            | {f"reward/{name}": value for name, value in batch.score_components.items()}
            | {key: value for key, value in environment.items() if not is_batch_count(key)}
        )
        episode_means |= self.processes.totals({k: v for k, v in environment.items() if is_batch_count(k)})
        sequence_kl = episode_means["objective/kl"]
        non_score_reward = -self.kl_ctl.value * sequence_kl
        metrics = {f"{key}_avg": sum(values) / len(values) for key, values in stats.items()}
        metrics |= episode_means | {
            "objective/non_score_reward": non_score_reward,
            "objective/rlhf_reward": episode_means["objective/scores"] + non_score_reward,
            "objective/kl_coef": self.kl_ctl.value,
            "val/num_eos_tokens": self.processes.sum(batch.contains_eos.sum()).item(),
            "lr": self.scheduler.get_last_lr()[0],
            "eps": len(prompts) / (time.perf_counter() - started),
            "skipped_batches": self.skipped_batches,
        }
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
        # The losses are means over this process's tokens, and the update averages gradients over processes.
        # Weighting each process by its share of the minibatch's tokens makes that average the mean over all
        # the minibatch's tokens, as one process holding it would compute (the weight is 1 with one process).
        tokens = mask.sum().float()
        share = tokens * self.processes.size / self.processes.sum(tokens).clamp(min=1)
        loss = (policy_loss + cfg.vf_coef * value_loss) * share
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
        token_means = {
            "loss/policy": policy_loss,
            "loss/value": value_loss,
            "policy/approxkl": policy_stats["approxkl"],
            "policy/clipfrac": policy_stats["clipfrac"],
            "policy/entropy": masked_mean(entropy_from_logits(logits.detach()), mask),
            "val/clipfrac": value_clipfrac,
            "val/ratio": policy_stats["ratio"],
        }
        return self.processes.means({key: (value * share).item() for key, value in token_means.items()})

    def _finite_or_skip(self, what: str, tensor: torch.Tensor) -> bool:
        """True if `tensor` is finite on every process; else count a skip (skip_nonfinite_batches) or raise
        NonFiniteError, on every process alike."""
        if self.processes.all_true(bool(torch.isfinite(tensor).all())):
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
        device, processes = self.accelerator.device, self.processes
        prompts = self.eval_prompts[processes.rank :: processes.size]  # each process scores every N-th prompt
        # The CPU generator is always forked; devices=[] skips the accelerator ones, which a CPU run does not have.
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else None, device_type=device.type):
            torch.manual_seed(self.config.seed + processes.rank)
            batch = self.rollout(prompts)
        kl = kl_per_token(batch.logprobs, batch.ref_logprobs, "k1") * batch.mask
        sums = {"held_out/reward": batch.scores.sum().item(), "held_out/kl": kl.sum().item()}
        for name, judge in self.judges.items():
            sums[f"held_out/judge/{name}"] = sum(checked_scores(name, judge, prompts, batch.responses))
        totals = processes.sum(torch.tensor([*sums.values(), len(prompts)], dtype=torch.float64, device=device))
        return dict(zip(sums, (totals[:-1] / totals[-1]).tolist(), strict=True))

    # ---- loop, checkpoints, final save ---------------------------------------------------------
    def train(self, resume: bool = True) -> list[dict[str, float]]:
        """Run to `total_steps`, resuming from the newest checkpoint when `resume`.

        Returns the metrics of each step this call ran (each with its `step`), skipped batches left out.
        """
        if resume and (checkpoints := list_checkpoints(self.output_dir / "checkpoints")):
            self.load_checkpoint(checkpoints[-1])
        if self.config.eval_steps and self.global_step == 0:
            # The curves' first point: the starting policy, at KL 0 (every process evaluates its share).
            self._log(self.held_out_metrics(), 0)
        history = []
        progress = tqdm(
            total=self.config.total_steps,
            initial=self.global_step,
            desc="PPO",
            unit="step",
            dynamic_ncols=True,
            disable=not self.processes.is_main,
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
            if metrics and self.global_step % self.config.logging_steps == 0:
                self._log(metrics, self.global_step)
            if self.global_step % self.config.save_steps == 0 or self.global_step == self.config.total_steps:
                self.save_checkpoint()
        progress.close()
        return history

    def _log(self, metrics: dict[str, float], step: int) -> None:
        """Hand the finite metrics to the sink, if any, from the main process only (they are global already)."""
        if self.metrics_sink and self.processes.is_main:
            self.metrics_sink({f"ppo/{k}": v for k, v in metrics.items() if math.isfinite(v)}, step)

    def save_checkpoint(self) -> Path:
        """Write `checkpoint-<step>` from the main process, with every process's sampling state; all wait for it."""
        folder = self.output_dir / "checkpoints"
        path = folder / f"checkpoint-{self.global_step}"
        state = {
            "global_step": self.global_step,
            "kl_coef": self.kl_ctl.value,
            "num_prompts": len(self.prompts),
            "num_processes": self.processes.size,
            "skipped_batches": self.skipped_batches,
        }
        torch_rng_states = gather_object([rng_states()])
        if self.processes.is_main:
            save_checkpoint(path, self.policy, self.optimizer, self.scheduler, state, torch_rng_states)
            prune_checkpoints(folder, CHECKPOINTS_TO_KEEP)
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = load_checkpoint(
            path, self.policy, self.optimizer, self.scheduler, self.processes.rank, self.processes.size
        )
        if state["num_prompts"] != len(self.prompts):
            raise ValueError(
                f"checkpoint {path} was made with {state['num_prompts']} prompts, this run has {len(self.prompts)}:"
                " the data changed, so the run cannot resume where it stopped"
            )
        self.global_step = state["global_step"]
        self.kl_ctl.value = state["kl_coef"]
        self.skipped_batches = state.get("skipped_batches", 0)

    def save_policy(self, path: str | Path) -> None:
        """Save the trained policy as a standalone model (LoRA merged), value head and tokenizer (from the main
        process; every process waits for it)."""
        if self.processes.is_main:
            self._save_policy(path)
        self.accelerator.wait_for_everyone()

    def _save_policy(self, path: str | Path) -> None:
        policy = self.policy
        if policy.is_peft:
            # Merge in fp32: a small LoRA update added to bf16 base weights would round away.
            trunk = copy.deepcopy(policy.pretrained_model).float().merge_and_unload()
            policy = type(policy)(trunk, policy.v_head)
        policy.save_pretrained(path, tokenizer=self.tokenizer)
