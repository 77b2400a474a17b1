"""The LoRA learner: trains an adapter on the agents' trajectories and hot-swaps each new version into the pool.

Owns: the pool's base model in torch with a peft LoRA, the learner step (read a batch from the trajectory
buffer, staleness gate, group advantages, optionally self-imitation replay of past trajectories that beat their
task's mean (``learner.replay``), decoupled PPO with AdamW and gradient clipping), publishing adapter
versions (saved to ``out_dir/adapters/v{N}``, then ``publish_adapter`` on every engine), checkpoints in
``out_dir/checkpoint`` with resume, and per-step metrics (``out_dir/learner_metrics.jsonl``).

Order inside a step, chosen so that a crash at any point neither loses nor doubles a trajectory:
train -> (publish due: version + 1, save the adapter) -> checkpoint (weights, optimizer, step, version, what the
steps since the last checkpoint consumed) -> commit in Redis (trained episode ids + XACK, one Lua call,
idempotent per step) -> publish to the engines. A resumed learner replays the checkpoint's commits and
re-publishes its version to engines that do not serve it; entries it had read but not checkpointed are still
pending in the stream and are read again first.

A plain class; the driver makes it a threaded Ray actor (``cluster.wiring.start_learner``: ``run`` in one thread,
``get_version`` / ``state`` / ``stop`` answer meanwhile). Without Ray:

    learner = Learner(cfg.learner, model_path, redis_url, "runs/x/learner", namespace="x", engines=pool.names or pool.handles)
    learner.run(max_steps=10)            # or burst=True: train on what is in the buffer, then return
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.timer import Timer
from learner.buffer import TrainTrajectory, TrajectoryBuffer
from learner.config import LearnerConfig
from learner.losses import (decoupled_ppo_loss, group_advantages, kl_to_reference, scale_negative,
                            self_imitation_advantages, staleness_filter, staleness_histogram, trajectory_scale)

log = logging.getLogger(__name__)
HOLD_LIMIT = 4  # batches' worth of trajectories held while waiting for task groups to form
REPLAY_CAPACITY = 512  # learner.replay: the latest trajectories that beat their task's mean, kept for replay


def group_key(t: TrainTrajectory, group_size: int) -> str:
    """The GRPO group of a trajectory: its task's episodes of one epoch (``group_size`` > 1: sampled together from
    the same policy and memory), or every episode of its task in the batch (one episode per task and epoch)."""
    return t.task_id if group_size <= 1 else f"{t.task_id}@{t.epoch}"


def trainable(trajs: list[TrainTrajectory], memory_guided: str) -> list[TrainTrajectory]:
    """The trajectories of a step that get gradients (``learner.memory_guided``): all of them (train), those whose
    prompts showed no retrieved memory (skip), or those that showed one (only: the others were played by the base
    model). The step still counts and commits the rest."""
    if memory_guided == "train":
        return list(trajs)
    if memory_guided == "skip":
        return [t for t in trajs if not t.memories_shown]
    if memory_guided == "only":
        return [t for t in trajs if t.memories_shown]
    raise ValueError(f"learner.memory_guided must be 'train', 'skip' or 'only', got {memory_guided!r}")


class SelfImitationMemory:
    """What ``learner.replay`` draws from: each task's mean reward over the trajectories trained on (the baseline)
    and the latest ``capacity`` trajectories that beat their task's baseline when they were trained on."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self._rewards: dict[str, list[float]] = {}  # task -> [reward sum, count]
        self._kept: deque[TrainTrajectory] = deque(maxlen=capacity)
        self._rng = random.Random(seed)

    def observe(self, trajs: list[TrainTrajectory]) -> None:
        for t in trajs:
            total = self._rewards.setdefault(t.task_id, [0.0, 0])
            total[0] += t.reward
            total[1] += 1

    def baseline(self, task_id: str) -> float:
        total, n = self._rewards.get(task_id, (0.0, 0))
        return total / n if n else 0.0

    def remember(self, trajs: list[TrainTrajectory]) -> None:
        self._kept.extend(t for t in trajs if t.reward > self.baseline(t.task_id))

    def sample(self, n: int) -> list[TrainTrajectory]:
        """Up to ``n`` kept trajectories that still beat their task's baseline, drawn at random."""
        better = [t for t in self._kept if t.reward > self.baseline(t.task_id)]
        return self._rng.sample(better, min(n, len(better)))


def resolve_engine(engine: Any) -> Any:
    """An engine actor handle from its Ray actor name (a str), or the handle itself. The driver passes names: Ray
    restarts a dead learner by running its constructor again with the same arguments, and a name resolves again
    where a handle among the arguments would be an object-store reference that Ray cannot keep for a restart."""
    if not isinstance(engine, str):
        return engine
    import ray

    try:
        return ray.get_actor(engine)
    except ValueError:
        raise ValueError(f"the learner's engine {engine!r} is not a live actor in this Ray namespace") from None


class Learner:
    """One LoRA policy trained on one namespace's trajectory stream (a single learner per stream)."""

    def __init__(self, cfg: LearnerConfig, model_path: str, redis_url: str, out_dir: str | Path, namespace: str,
                 engines: list[Any] | None = None, seed: int = 0, initial_version: int = 0,
                 group_size: int = 1) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        self.cfg, self.model_path = cfg, model_path
        self.engines = [resolve_engine(e) for e in engines or []]
        self.group_size = group_size  # rollout.group_size: episodes of a task per epoch, one GRPO group
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device("cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(cfg.num_cpus)))
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.target_modules),
                          lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
        self.model = get_peft_model(base, lora).to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr)
        self.buffer = TrajectoryBuffer(redis_url, namespace)
        self.buffer.ensure_group()

        self.step_no = 0  # learner steps done (optimizer updates happen minibatches times per step)
        # adapter version of the last publication (0 = base model). Versions are the engines' LoRA ids, bound to a
        # path for an engine's lifetime: a fresh learner facing engines that outlive runs (one shared test engine)
        # starts at ``initial_version`` and calls ``publish_current`` so that rollouts run on a version it owns.
        self.version = initial_version
        self.resumed_from: int | None = None
        self._held: list[tuple[str, TrainTrajectory]] = []  # read, waiting for a full batch
        self._skip_entries: list[str] = []  # read, not to be trained on (duplicate, malformed, stale): ack next commit
        self._uncheckpointed: list[dict] = []  # per step since the last checkpoint: step, version, episodes, entries
        self._stale_pending = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # steps and checkpoints never overlap (the actor is threaded)
        self._started = time.monotonic()
        self.last_metrics: dict[str, Any] = {}
        self.totals = Counter()  # trained, stale, steps, publishes
        # learner.replay: in memory only, a restarted learner starts it empty
        self.replay = SelfImitationMemory(REPLAY_CAPACITY, seed)
        self._resume()

    # ------------------------------------------------------------------ public API

    def get_version(self) -> int:
        """The adapter version the learner last published (what staleness is measured against)."""
        return self.version

    def state(self) -> dict[str, Any]:
        return {"step": self.step_no, "version": self.version, "resumed_from": self.resumed_from,
                "held": len(self._held), "totals": dict(self.totals), "last": self.last_metrics,
                "device": str(self.device), "pid": os.getpid()}

    def publish_current(self) -> int:
        """Save the current weights as ``adapters/v{version}`` and serve them on every engine; returns the version."""
        with self._lock:
            if self.step_no:  # the engines cache a version's weights by id: never re-save a published version
                raise RuntimeError("publish_current is for a fresh learner (step 0); this one is at step "
                                   f"{self.step_no} and publishes by itself")
            self._save_adapter(self._adapter_dir(self.version))
            self._publish(self.version)
            return self.version

    def stop(self) -> None:
        """Ask ``run`` to return after the current step (it checkpoints what it consumed first)."""
        self._stop.set()

    def run(self, max_steps: int | None = None, burst: bool = False, block_ms: int = 500) -> dict[str, Any]:
        """Train until ``stop()``, ``max_steps`` steps, or (``burst``) the buffer has nothing left; then checkpoint."""
        import redis

        done = 0
        while not self._stop.is_set() and (max_steps is None or done < max_steps):
            try:
                metrics = self.step(block_ms=block_ms, partial=burst)
            except redis.RedisError as e:  # deliberate retry: the server may be restarting (its AOF keeps the
                log.warning("learner step: %s: %s; retrying", type(e).__name__, e)  # stream and the commits)
                self._stop.wait(1.0)
                continue
            if metrics is None:
                if burst:
                    break
                continue
            done += metrics["trajectories"] > 0
        with self._lock:
            if self._uncheckpointed or self._skip_entries:
                self._checkpoint_and_commit()
        self._stop.clear()  # a stop() ends one run
        return self.state()

    def step(self, block_ms: int = 500, partial: bool = False) -> dict[str, Any] | None:
        """One learner step on ``batch_size`` trajectories (fewer if ``partial``); None when no batch is ready."""
        with self._lock:
            return self._step(block_ms, partial)

    # ------------------------------------------------------------------ the step

    def _step(self, block_ms: int, partial: bool) -> dict[str, Any] | None:
        timer = Timer()
        started = time.perf_counter()
        with timer("read"):  # 1. a batch of whole task groups, or None while they form
            batch = self._gather(block_ms, partial)
        if batch is None:
            return None
        # 2. what gets gradients (learner.memory_guided), then the staleness gate on it; the rest is counted only
        chosen = {id(t) for t in trainable([t for _, t in batch], self.cfg.memory_guided)}
        train, train_entries, dropped = self._gate([b for b in batch if id(b[1]) in chosen])
        rest = [b for b in batch if id(b[1]) not in chosen]
        trajs, entries = train + [t for _, t in rest], train_entries + [e for e, _ in rest]
        if not trajs:
            return {"trajectories": 0, "dropped_stale": dropped, "version": self.version, "step": self.step_no}
        self.replay.observe(train)  # task baselines, then past trajectories that beat them (learner.replay)
        replayed = self.replay.sample(self.cfg.replay)
        with timer("prox"):  # 3. advantages, sequences, proximal (and reference) logprobs
            prep = self._prepare(train, replayed)
        with timer("train"):  # 4. decoupled PPO updates
            sums, grad_norms = self._update(prep) if prep.seqs else (Counter(), [])
        if self.cfg.replay:
            self.replay.remember(train)
        self._record_step(trajs, entries)
        saved_at = time.perf_counter()
        with timer("checkpoint"):  # 5. save the adapter if due, checkpoint + commit, then serve it on the engines
            publish = self._save_and_checkpoint()
        latency = self._announce(publish, since=saved_at)
        metrics = self._metrics(trajs, train, prep, sums, grad_norms, dropped, publish, latency, timer,
                                time.perf_counter() - started)
        self.last_metrics = metrics
        with open(self.out_dir / "learner_metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        return metrics

    def _gather(self, block_ms: int, partial: bool) -> list[tuple[str, TrainTrajectory]] | None:
        """Read (own pending entries first after a restart, then new ones) and hold trajectories until a batch of
        task groups forms: a group-normalised advantage needs at least two episodes of the same task."""
        if len(self._held) < HOLD_LIMIT * self.cfg.batch_size:
            skip = {t.episode_id for _, t in self._held} | {e for s in self._uncheckpointed for e in s["episodes"]}
            for entry_id, traj in self.buffer.read(self.cfg.batch_size, block_ms=block_ms, skip=skip):
                if traj is None:
                    self._skip_entries.append(entry_id)
                else:
                    skip.add(traj.episode_id)
                    self._held.append((entry_id, traj))
        return self._take_batch(partial)

    def _gate(self, batch: list[tuple[str, TrainTrajectory]]) -> tuple[list[TrainTrajectory], list[str], int]:
        """Drop what is more than η versions behind the current adapter; returns (kept, their entries, dropped)."""
        keep, drop = staleness_filter([t.version for _, t in batch], self.version, self.cfg.max_staleness)
        self._skip_entries += [batch[i][0] for i in drop]
        self._stale_pending += len(drop)
        self.totals["stale"] += len(drop)
        return [batch[i][1] for i in keep], [batch[i][0] for i in keep], len(drop)

    def _prepare(self, trajs: list[TrainTrajectory], replayed: list[TrainTrajectory] | None = None) -> _Prepared:
        """Group advantages (``group_key``) of the fresh trajectories and self-imitation advantages of the
        ``replayed`` ones (after them), the turns as sequences split into minibatches of micro-batch chunks, and
        the proximal policy's logprobs (and the base model's, for the KL penalty) without gradients."""
        import torch

        cfg = self.cfg
        replayed = replayed or []
        adv = group_advantages([t.reward for t in trajs], [group_key(t, self.group_size) for t in trajs])
        adv = scale_negative(adv, cfg.negative_scale)
        if replayed:
            adv = torch.cat([adv, self_imitation_advantages([t.reward for t in replayed],
                                                            [self.replay.baseline(t.task_id) for t in replayed])])
        n_fresh, trajs = len(trajs), list(trajs) + replayed
        seqs = [(ti, turn) for ti, t in enumerate(trajs) for turn in t.turns]
        per_traj = trajectory_scale([sum(len(turn.output_ids) for turn in t.turns) for t in trajs], cfg.loss_agg)
        # minibatch mb holds the turns of trajectories ti with ti % minibatches == mb, in micro-batch chunks
        chunks = []
        for mb in range(cfg.minibatches):
            rows = [s for s in range(len(seqs)) if seqs[s][0] % cfg.minibatches == mb]
            chunks += [(mb, rows[i:i + cfg.micro_batch]) for i in range(0, len(rows), cfg.micro_batch)]
        with torch.no_grad():
            self.model.eval()
            prox = [self._logprobs([seqs[s] for s in rows])[0] for _, rows in chunks]
            ref = None
            if cfg.kl_coef > 0:  # the base model: LoRA off
                with self.model.disable_adapter():
                    ref = [self._logprobs([seqs[s] for s in rows])[0] for _, rows in chunks]
        return _Prepared(adv, seqs, per_traj, chunks, prox, ref, n_fresh)

    def _update(self, prep: _Prepared) -> tuple[Counter, list[float]]:
        """Decoupled PPO: ``update_epochs`` passes, each one AdamW update per minibatch (gradients accumulated over
        its chunks), gradient clipping; returns the summed loss terms and the gradient norm of each update."""
        import torch

        cfg = self.cfg
        seqs, chunks = prep.seqs, prep.chunks
        self.model.train()
        sums: Counter = Counter()
        grad_norms = []
        # each minibatch's chunks and token count, once; every pass reuses them
        parts = [[c for c, (m, _) in enumerate(chunks) if m == mb] for mb in range(cfg.minibatches)]
        parts = [(mine, sum(len(seqs[s][1].output_ids) for c in mine for s in chunks[c][1])) for mine in parts]
        updates = [part for _ in range(cfg.update_epochs) for part in parts]
        for mine, n_tokens in updates:
            if n_tokens == 0:
                continue
            self.optimizer.zero_grad(set_to_none=True)
            for c in mine:
                rows = chunks[c][1]
                logp, behav, mask = self._logprobs([seqs[s] for s in rows])
                if prep.n_fresh < len(prep.per_traj):  # replayed turns: no weight to their old behaviour policy
                    replay_rows = torch.tensor([seqs[s][0] >= prep.n_fresh for s in rows], device=self.device)
                    behav = torch.where(replay_rows[:, None], prep.prox[c], behav)
                a = prep.adv[[seqs[s][0] for s in rows]].to(self.device)[:, None].expand_as(logp)
                scale = torch.tensor([prep.per_traj[seqs[s][0]] for s in rows], device=self.device)[:, None].expand_as(logp)
                loss, m = decoupled_ppo_loss(logp, prep.prox[c], behav, a, mask, cfg.clip_eps,
                                             cfg.behav_weight_cap, num_tokens=n_tokens, token_scale=scale,
                                             clip_eps_high=cfg.clip_eps_high)
                if prep.ref is not None:  # GRPO's penalty: k3 estimate of KL(pi_theta || pi_ref) per token
                    kl_ref = kl_to_reference(logp, prep.ref[c], mask * scale)
                    loss = loss + cfg.kl_coef * kl_ref / n_tokens
                    sums["kl_ref_sum"] += float(kl_ref.detach())
                loss.backward()
                sums["loss"] += float(loss.detach()) / len(updates)
                for k, v in m.items():
                    sums[k] += float(v)
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)))
            self.optimizer.step()
        return sums, grad_norms

    def _record_step(self, trajs: list[TrainTrajectory], entries: list[str]) -> None:
        """Count the step and remember what it consumed, for the next checkpoint's commit."""
        self.step_no += 1
        self.totals["steps"] += 1
        self.totals["trained"] += len(trajs)
        self._uncheckpointed.append({"step": self.step_no, "episodes": [t.episode_id for t in trajs],
                                     "entries": entries, "stale": self._stale_pending, "version": None})
        self._stale_pending = 0

    def _save_and_checkpoint(self) -> bool:
        """Save a new adapter version when one is due (engines are told after the checkpoint), then checkpoint and
        commit when due; returns whether a version was saved."""
        publish = self.step_no % self.cfg.publish_interval == 0
        if publish:
            self.version += 1
            self._save_adapter(self._adapter_dir(self.version))
        self._uncheckpointed[-1]["version"] = self.version
        if publish or self.step_no % self.cfg.checkpoint_interval == 0:
            self._checkpoint_and_commit()
        return publish

    def _announce(self, publish: bool, since: float) -> float | None:
        """Serve the saved version on every engine; returns the seconds from ``since`` (save start) until every
        engine serves it to new requests, or None when nothing was published."""
        if not publish:
            return None
        self._publish(self.version)
        self.totals["publishes"] += 1
        return time.perf_counter() - since

    def _metrics(self, trajs: list[TrainTrajectory], train: list[TrainTrajectory], prep: _Prepared, sums: Counter,
                 grad_norms: list[float], dropped: int, publish: bool, latency: float | None, timer: Timer,
                 elapsed: float) -> dict[str, Any]:
        tokens = max(sums["tokens"], 1.0)
        return {
            "step": self.step_no, "version": self.version, "trajectories": len(trajs), "dropped_stale": dropped,
            "not_trained": len(trajs) - len(train),  # learner.memory_guided: counted in the step, no gradient
            "sequences": len(prep.seqs), "tokens": int(sums["tokens"]) // self.cfg.update_epochs, "loss": sums["loss"],
            "kl_behav": sums["kl_sum"] / tokens, "kl_ref": sums["kl_ref_sum"] / tokens,
            "clip_frac": sums["clipped"] / tokens, "behav_weight": sums["weight_sum"] / tokens,
            "grad_norm": max(grad_norms or [0.0]),
            "advantage_abs": float(prep.adv[:prep.n_fresh].abs().mean()) if prep.n_fresh else 0.0,
            "replayed": len(prep.per_traj) - prep.n_fresh,
            "replay_advantage": float(prep.adv[prep.n_fresh:].mean()) if len(prep.per_traj) > prep.n_fresh else 0.0,
            "reward_mean": sum(t.reward for t in trajs) / len(trajs),
            "staleness": staleness_histogram([t.version for t in train], self.version - publish),
            "step_s": elapsed, "steps_per_s": 1.0 / elapsed if elapsed > 0 else 0.0,
            "trained_per_s": self.totals["trained"] / (time.monotonic() - self._started),
            "published": publish, "publish_latency_s": latency, "timings": timer.as_dict(6),
            "episode_ids": [t.episode_id for t in trajs], "time": time.time(),
        }

    def _take_batch(self, partial: bool) -> list[tuple[str, TrainTrajectory]] | None:
        """Up to ``batch_size`` held trajectories made of whole groups (``group_key``: at least max(2, group_size)
        episodes, oldest first); None while too few are grouped. ``partial`` (draining) takes what is held. More
        than ``HOLD_LIMIT`` batches held (tasks that rarely repeat) -> the oldest batch goes as it is (singletons
        get advantage 0)."""
        size = self.cfg.batch_size
        whole = max(2, self.group_size)
        groups: dict[str, list[int]] = {}  # group -> positions in the hold, oldest group first
        for i, (_, t) in enumerate(self._held):
            groups.setdefault(group_key(t, self.group_size), []).append(i)
        chosen: list[int] = []
        for members in groups.values():
            if len(members) >= whole and len(chosen) + len(members) <= size:
                chosen += members
        if len(chosen) < size:
            if partial and self._held:
                chosen = list(range(min(size, len(self._held)))) if not chosen else chosen
            elif len(self._held) >= HOLD_LIMIT * size:
                chosen = list(range(size))
            else:
                return None
        picked = set(chosen)
        batch = [self._held[i] for i in sorted(picked)]
        self._held = [h for i, h in enumerate(self._held) if i not in picked]
        return batch

    def _logprobs(self, seqs: list[tuple[int, Any]]) -> tuple[Any, Any, Any]:
        """Per output token of each turn (right-padded): log pi_theta, behaviour logprob, mask."""
        import torch

        lengths = [len(t.prompt_ids) + len(t.output_ids) for _, t in seqs]
        width = max(lengths)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        attn = torch.zeros(len(seqs), width, dtype=torch.long)
        behav = torch.zeros(len(seqs), width - 1)
        mask = torch.zeros(len(seqs), width - 1)
        for row, (_, t) in enumerate(seqs):
            full = list(t.prompt_ids) + list(t.output_ids)
            ids[row, :len(full)] = torch.tensor(full)
            attn[row, :len(full)] = 1
            start = len(t.prompt_ids) - 1  # logits at position p predict token p + 1
            behav[row, start:start + len(t.output_ids)] = torch.tensor(t.logprobs)
            mask[row, start:start + len(t.output_ids)] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        logits = self.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return logp, behav.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------------ adapters and engines

    def _adapter_dir(self, version: int) -> Path:
        return self.out_dir / "adapters" / f"v{version}"

    def _save_adapter(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)

    def _publish(self, version: int, only_stale: bool = False) -> None:
        """Serve ``version`` on every engine (``only_stale``: only those serving another version)."""
        if not self.engines:
            return
        import ray

        targets = self.engines
        if only_stale:
            health = ray.get([h.health.remote() for h in self.engines])
            targets = [h for h, s in zip(self.engines, health) if s["adapter_version"] != version]
        ray.get([h.publish_adapter.remote(version, str(self._adapter_dir(version))) for h in targets])

    # ------------------------------------------------------------------ checkpoint and resume

    def _checkpoint_and_commit(self) -> None:
        """Write the checkpoint (atomically: a new folder, then the ``latest.json`` pointer), then commit in Redis."""
        import torch

        root = self.out_dir / "checkpoint"
        folder = root / f"step-{self.step_no}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.model.save_pretrained(str(folder / "adapter"))
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        # the entries read but not trained on are acknowledged with the last step (or a step-less commit)
        steps = [dict(s) for s in self._uncheckpointed]
        if self._skip_entries:
            if steps:
                steps[-1]["entries"] = steps[-1]["entries"] + self._skip_entries
            else:  # nothing trained since the last checkpoint: ack under the last committed step (a no-op commit)
                steps.append({"step": self.step_no, "episodes": [], "entries": list(self._skip_entries),
                              "stale": self._stale_pending, "version": self.version, "ack_only": True})
        state = {"step": self.step_no, "version": self.version, "model_path": self.model_path,
                 "lora_rank": self.cfg.lora_rank, "target_modules": list(self.cfg.target_modules),
                 "totals": dict(self.totals), "commits": steps, "time": time.time()}
        (folder / "state.json").write_text(json.dumps(state))
        pointer = root / "latest.json"
        tmp = root / "latest.json.tmp"
        tmp.write_text(json.dumps({"step": self.step_no, "dir": folder.name}))
        os.replace(tmp, pointer)
        for old in root.glob("step-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
        self._commit(steps)
        self._uncheckpointed, self._skip_entries, self._stale_pending = [], [], 0

    def _commit(self, steps: list[dict]) -> None:
        for s in steps:
            if s.get("ack_only"):  # a step number at or below committed_step only acknowledges
                self.buffer.commit(-1, self.version, [], s["entries"])
            else:
                res = self.buffer.commit(s["step"], s["version"], s["episodes"], s["entries"], s["stale"])
                if res["duplicates"]:
                    log.error("step %d: %d episodes were already trained (two learners on one stream?)",
                              s["step"], res["duplicates"])

    def _resume(self) -> None:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        pointer = self.out_dir / "checkpoint" / "latest.json"
        if not pointer.is_file():
            return
        folder = pointer.parent / json.loads(pointer.read_text())["dir"]
        state = json.loads((folder / "state.json").read_text())
        if state["model_path"] != self.model_path or state["lora_rank"] != self.cfg.lora_rank:
            log.warning("checkpoint %s was made for %s (rank %s); resuming onto %s (rank %s)", folder,
                        state["model_path"], state["lora_rank"], self.model_path, self.cfg.lora_rank)
        weights = load_file(str(folder / "adapter" / "adapter_model.safetensors"), device=str(self.device))
        result = set_peft_model_state_dict(self.model, weights)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"checkpoint {folder} does not fit this LoRA: unexpected {result.unexpected_keys[:3]}")
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.device, weights_only=True))
        self.step_no, self.version = int(state["step"]), int(state["version"])
        self.totals.update(state.get("totals", {}))
        self.resumed_from = self.step_no
        self._commit(state["commits"])  # idempotent: a commit that already happened only re-acknowledges
        if self.version > 0:
            self._publish(self.version, only_stale=True)  # rollouts may have kept running on an older one
        log.info("learner resumed from %s: step %d, adapter version %d", folder, self.step_no, self.version)



@dataclass
class _Prepared:
    """A step's inputs to the updates: advantages, the turns as (trajectory index, turn), each trajectory's token
    weight, the micro-batch chunks (minibatch, rows), the proximal / reference logprobs per chunk, and how many
    trajectories are fresh (the replayed ones follow them)."""

    adv: Any
    seqs: list[tuple[int, Any]]
    per_traj: list[float]
    chunks: list[tuple[int, list[int]]]
    prox: list[Any]
    ref: list[Any] | None
    n_fresh: int  # trajectories [0, n_fresh) are the step's batch, the rest replayed (learner.replay)
