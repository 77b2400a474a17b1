"""The learner's math, pure torch: group-normalised advantages, the decoupled PPO objective, the staleness filter.

Owns nothing stateful; every function is unit-tested with hand-computed cases (tests/unit/test_learner_math.py).

- ``group_advantages``: GRPO without a critic. Groups are the episodes of one task in the batch;
  A = (r - mean_group) / (std_group + eps) with the population standard deviation; a group of one episode, or
  one whose rewards are all equal, gets A = 0 (no signal).
- ``decoupled_ppo_loss``: AReaL's objective. Per output token, with pi_behav the engine's logprob (the policy
  version that sampled it), pi_prox the policy at the start of this learner step (no grad) and pi_theta the
  policy being trained: r = pi_theta / pi_prox, w = pi_prox / pi_behav (detached, optionally capped),
  loss = - sum_t w_t * min(r_t A_t, clip(r_t, 1-eps, 1+eps_high) A_t) / number of tokens (eps_high = eps unless
  DAPO's clip-higher is set).
- ``scale_negative``: the weight of below-average episodes (``learner.negative_scale``; 1 = GRPO, 0 = learn only
  from the better episodes of each group, as rejection-sampling fine-tuning does).
- ``self_imitation_advantages``: self-imitation learning (Oh et al., 2018) for replayed episodes:
  A = max(r - baseline, 0), the baseline being the mean reward of the episode's task so far; a past episode
  that did better than its task usually does is reinforced again, one that did not gives nothing.
- ``kl_to_reference``: GRPO's penalty keeping the policy near the base model (``learner.kl_coef``).
- ``trajectory_scale``: how the loss aggregates tokens: every token alike, or every trajectory alike.
- ``staleness_filter``: keep a trajectory only if current_version - its version <= eta.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch


def group_advantages(rewards: Sequence[float] | torch.Tensor, groups: Sequence[str], eps: float = 1e-6) -> torch.Tensor:
    """One advantage per episode: its reward normalised within the episodes of the same group (task)."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if r.ndim != 1 or len(groups) != r.shape[0]:
        raise ValueError(f"{r.shape} rewards for {len(groups)} group labels")
    adv = torch.zeros_like(r)
    for g in dict.fromkeys(groups):  # first-seen order; deterministic
        idx = torch.tensor([i for i, x in enumerate(groups) if x == g])
        if len(idx) < 2:
            continue
        x = r[idx]
        adv[idx] = (x - x.mean()) / (x.std(unbiased=False) + eps)
    return adv.to(torch.float32)


def scale_negative(advantages: torch.Tensor, scale: float) -> torch.Tensor:
    """Negative advantages times ``scale`` (positive ones unchanged): 1 keeps GRPO's symmetric signal, 0 drops
    the push-down on what the worse episodes of a group did."""
    if not 0.0 <= scale <= 1.0:
        raise ValueError(f"negative advantage scale must be in [0, 1], got {scale}")
    return torch.where(advantages < 0, advantages * scale, advantages)


def self_imitation_advantages(rewards: Sequence[float] | torch.Tensor,
                              baselines: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """One advantage per replayed episode: how much its reward beat its task's baseline, never below 0."""
    r = torch.as_tensor(rewards, dtype=torch.float32)
    b = torch.as_tensor(baselines, dtype=torch.float32)
    if r.ndim != 1 or r.shape != b.shape:
        raise ValueError(f"{tuple(r.shape)} rewards for {tuple(b.shape)} baselines")
    return (r - b).clamp(min=0.0)


def decoupled_ppo_loss(logp: torch.Tensor, logp_prox: torch.Tensor, logp_behav: torch.Tensor,
                       advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float,
                       behav_weight_cap: float | None = None, num_tokens: float | None = None,
                       token_scale: torch.Tensor | None = None, clip_eps_high: float | None = None,
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The decoupled PPO loss over the tokens where ``mask`` is 1 (all tensors the same shape).

    ``num_tokens`` divides the sum (default: ``mask.sum()``); pass the whole batch's token count when the batch
    is split into micro-batches so that their losses add up to the batch's mean. ``token_scale`` (same shape)
    multiplies each token's term: ``trajectory_scale`` gives every trajectory the same total weight. Metrics are
    sums over this call's tokens (``tokens``, ``kl_sum``, ``clipped``, ``weight_sum``), to be added up by the
    caller. ``clip_eps_high`` (DAPO's clip-higher) replaces ``clip_eps`` on the upper side: the ratio is clipped to
    [1 - clip_eps, 1 + clip_eps_high].
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    mask = mask.to(logp.dtype)
    n = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=logp.dtype)
    scale = mask if token_scale is None else mask * token_scale.to(logp.dtype)
    logp_prox, logp_behav = logp_prox.detach(), logp_behav.detach()
    ratio = torch.exp(logp - logp_prox)
    weight = torch.exp(logp_prox - logp_behav)
    if behav_weight_cap is not None:
        weight = weight.clamp(max=behav_weight_cap)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + high) * advantages)
    loss = -(weight * surrogate * scale).sum() / n.clamp(min=1)
    with torch.no_grad():
        d = logp - logp_behav  # log(pi_theta / pi_behav); k3 estimator of KL(behav || theta) = e^d - 1 - d
        kl = (torch.exp(d) - 1 - d) * mask
        clipped = ((ratio < 1 - clip_eps) | (ratio > 1 + high)).to(logp.dtype) * mask
        metrics = {"tokens": mask.sum(), "kl_sum": kl.sum(), "clipped": clipped.sum(), "weight_sum": (weight * mask).sum()}
    return loss, metrics


def kl_to_reference(logp: torch.Tensor, logp_ref: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted sum over tokens of the k3 estimate of KL(pi_theta || pi_ref): e^(ref - logp) - (ref - logp) - 1
    (>= 0, zero when the policies agree; gradients flow through ``logp``)."""
    d = logp_ref.detach() - logp
    return ((torch.exp(d) - d - 1) * weight).sum()


def trajectory_scale(tokens_per_trajectory: Sequence[int], mode: str) -> list[float]:
    """Per-token weight of each trajectory's tokens under the loss aggregation ``mode``, for a loss divided by the
    batch's token count: 'token-mean' weighs every token alike (1.0), so long trajectories weigh more;
    'trajectory-mean' gives each trajectory the same total weight (mean tokens / its tokens): with rewards only
    at the end, long failed episodes then do not outweigh short wins within a group."""
    if mode == "token-mean":
        return [1.0] * len(tokens_per_trajectory)
    if mode != "trajectory-mean":
        raise ValueError(f"unknown loss aggregation {mode!r}; expected 'token-mean' or 'trajectory-mean'")
    mean = sum(tokens_per_trajectory) / max(len(tokens_per_trajectory), 1)
    return [mean / n if n else 0.0 for n in tokens_per_trajectory]


def staleness_filter(versions: Sequence[int], current_version: int, max_staleness: int) -> tuple[list[int], list[int]]:
    """Indices to keep (current - version <= max_staleness) and indices dropped, in input order."""
    keep, drop = [], []
    for i, v in enumerate(versions):
        (keep if current_version - v <= max_staleness else drop).append(i)
    return keep, drop


def staleness_histogram(versions: Sequence[int], current_version: int) -> dict[int, int]:
    """How many trajectories are k versions behind, for each k seen."""
    return dict(sorted(Counter(current_version - v for v in versions).items()))
