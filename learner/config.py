"""The LoRA learner's config section (``learner:``).

Every key's doc is the README's config reference (``epiq config --reference``); the driver's loader
(``cluster/config.py``) builds it strictly from YAML and prefixes the key path to any error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import check, doc, non_negative, positive


@dataclass
class LearnerConfig:
    """The optional AReaL-style asynchronous LoRA learner."""

    enabled: bool = doc(False, "Train a LoRA adapter on the agents' trajectories and hot-swap it into the pool.")
    lora_rank: int = doc(8, "LoRA rank r.")
    lora_alpha: float = doc(16.0, "LoRA scaling alpha.")
    target_modules: list[str] = doc(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "Modules that get LoRA weights.")
    lr: float = doc(1e-4, "AdamW learning rate.")
    batch_size: int = doc(16, "Trajectories per learner step.")
    max_staleness: int = doc(4, "η: a trajectory is trained on only if current version - its version <= η.")
    publish_interval: int = doc(1, "Learner steps between adapter publications.")
    clip_eps: float = doc(0.2, "PPO ratio clip ε.")
    clip_eps_high: float | None = doc(None, "Upper ratio clip (DAPO's clip-higher): the ratio is clipped to [1 - clip_eps, 1 + clip_eps_high], so a token the policy rarely takes can gain more in one step; null = clip_eps.")
    grad_clip: float = doc(1.0, "Gradient norm clip.")
    num_gpus: float = doc(0.0, "GPUs for the learner actor.")
    resources: dict[str, float] = doc({}, "Ray custom resources each learner actor requires, e.g. {learner: 1} to place it on the `learner` worker group (k8s/).")
    max_restarts: int = doc(3, "Times Ray restarts a dead learner actor in one seed's run; it resumes from its checkpoint and the driver restarts its training loop. Beyond that the job ends with an error.")
    num_cpus: float = doc(1.0, "CPUs for the learner actor (also its torch thread count on CPU).")
    minibatches: int = doc(1, "Optimizer updates per learner step: the batch is split in this many parts; the proximal policy is the one at the start of the step, so clipping acts from the second update on.")
    micro_batch: int = doc(16, "Sequences (turns) per forward/backward pass; gradients are accumulated over them.")
    checkpoint_interval: int = doc(1, "Learner steps between checkpoints; trajectories are acknowledged in the buffer only once a checkpoint covers them.")
    behav_weight_cap: float | None = doc(None, "Upper bound on the decoupled weight pi_prox/pi_behav per token; null = uncapped.")
    kl_coef: float = doc(0.0, "Weight of a KL(pi_theta || base model) penalty per token (GRPO's beta; 0 = none, as AReaL). Costs one more forward pass per step.")
    negative_scale: float = doc(1.0, "Weight of negative advantages, in [0, 1]: 1 = GRPO (episodes worse than their group's mean are pushed down as much as better ones are pushed up); 0 = only the better episodes of a group are reinforced, as in rejection-sampling fine-tuning.")
    update_epochs: int = doc(1, "Passes over each learner step's batch (PPO epochs); each pass makes `minibatches` updates, all clipped against the policy at the start of the step.")
    replay: int = doc(0, "Self-imitation (Oh et al., 2018): each step also trains on up to this many past trajectories (kept in the learner's memory, the latest 512) that beat their task's mean reward so far, with advantage reward - that mean; no importance weight to their old behaviour policy. 0 = GRPO on fresh trajectories only. A deviation from AReaL (README, \"Learning\").")
    memory_guided: Literal["train", "skip", "only"] = doc("train", "How the adapter and the memory share episodes (memory+lora): 'train' = the adapter plays and trains on every episode; 'skip' = it plays every episode but trains only on those whose prompts showed no retrieved memory; 'only' = it plays and trains only on the episodes shown a memory, and the base model plays the others (so exploring the unsolved tasks is memrl's). Episodes not trained on still count in their learner step, so dispatch is paced as with 'train'. 'skip' and 'only' are deviations, measured in the README (\"Learning\").")
    loss_agg: Literal["token-mean", "trajectory-mean"] = doc("trajectory-mean", "How the loss averages tokens: 'token-mean' weighs every token alike (long failed episodes outweigh short wins); 'trajectory-mean' gives every trajectory the same weight.")

    def __post_init__(self) -> None:
        positive(self, "lora_rank", "lora_alpha", "lr", "batch_size", "publish_interval", "clip_eps", "grad_clip",
                  "minibatches", "micro_batch", "checkpoint_interval", "update_epochs")
        non_negative(self, "max_restarts", "max_staleness", "num_gpus", "num_cpus", "kl_coef", "replay")
        check(0.0 <= self.negative_scale <= 1.0, "negative_scale", f"must be in [0, 1], got {self.negative_scale}")
        check(self.minibatches <= self.batch_size, "minibatches", f"must be <= batch_size ({self.batch_size}), got {self.minibatches}")
        check(bool(self.target_modules), "target_modules", "must name at least one module")
        check(not any(m in ("embed_tokens", "lm_head") for m in self.target_modules), "target_modules",
               "embed_tokens / lm_head cannot take LoRA here (tied embeddings; vLLM serves projection LoRA only)")
        if self.clip_eps_high is not None:
            check(self.clip_eps_high > 0, "clip_eps_high", f"must be > 0, got {self.clip_eps_high}")
        if self.behav_weight_cap is not None:
            check(self.behav_weight_cap > 0, "behav_weight_cap", f"must be > 0, got {self.behav_weight_cap}")
