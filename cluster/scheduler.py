"""The scheduler: the MemRL protocol (epochs over a task set, per seed) with bounded episodes in flight.

Owns: dispatching episode specs to rollout actors (``rollout.group_size`` episodes of each task per epoch, a
group dispatched together) — continuously (``rollout.mode: async``) or in batches with a
barrier (``sync``) — at most ``rollout.max_in_flight`` at once, and with the LoRA learner on, admission control
that keeps trajectories within the staleness bound η; replacing a dead rollout actor and re-dispatching
its unfinished episodes (same episode ids, so the memory counts each episode once); recording every finished
episode (``episodes.jsonl``, the basis of resume) and per-epoch metrics; the progress line.

    sched = Scheduler(cfg, tasks, spawn_worker, recorder)
    sched.run_seed(seed, done=recorder.finished(seed))       # returns when every epoch of the seed is recorded
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from actors.agent import EpisodeSpec, Trajectory
from cluster.config import Config
from cluster.metrics import Recorder

log = logging.getLogger(__name__)


def _next_free(queue: deque[EpisodeSpec], busy: dict[str, int]) -> EpisodeSpec | None:
    """Take the first queued episode whose task has nothing in flight, or only episodes of the same epoch (its
    group); queue order is epoch order, so a task's next epoch waits until its whole group is back."""
    for i, spec in enumerate(queue):
        if busy.get(spec.task.task_id, spec.epoch) == spec.epoch:
            del queue[i]
            return spec
    return None


class Scheduler:
    """Runs episodes on a set of rollout actors; ``spawn_worker(i)`` makes actor number i (used for replacements)."""

    def __init__(self, cfg: Config, tasks: list[Any], spawn_worker: Callable[[int], Any], recorder: Recorder,
                 learn: bool = True, run_id: str = "", learner_version: Callable[[], int] | None = None) -> None:
        self.cfg, self.tasks, self.spawn, self.recorder, self.learn = cfg, tasks, spawn_worker, recorder, learn
        self.run_id = run_id
        self.learner_version = learner_version  # set when the LoRA learner runs: admission control (staleness η)
        self.dispatched = 0  # episodes dispatched since the scheduler started (AReaL's admission counter)
        self.held_back = 0  # dispatch rounds that admission control held back
        self._v0: int | None = None
        self.workers = [spawn_worker(i) for i in range(cfg.rollout.actors)]
        self.next_worker_id = len(self.workers)
        self.replaced = 0

    def run_seed(self, seed: int, done: set[tuple[int, str]] | None = None, max_episodes: int | None = None,
                 epochs: int | None = None, tasks: list[Any] | None = None) -> None:
        """Every (epoch, task) of ``seed`` not in ``done``, in epoch order; ``max_episodes`` stops early (tests);
        ``epochs`` / ``tasks`` replace the config's epochs and the scheduler's task set for this call."""
        import ray

        done = done or set()
        queue = deque(EpisodeSpec(task, epoch, seed, learn=self.learn, run_id=self.run_id, sample=g)
                      for epoch in range(epochs or self.cfg.rollout.epochs) for task in (tasks or self.tasks)
                      for g in range(self.cfg.rollout.group_size) if (epoch, task.task_id, g) not in done)
        in_flight: dict[Any, tuple[EpisodeSpec, int]] = {}  # ref -> (spec, worker index)
        load = [0] * len(self.workers)
        limit = self.cfg.rollout.max_in_flight
        finished = 0
        while queue or in_flight:
            # 1. dispatch: async keeps the pipe full; sync only refills once the whole batch is back
            #    (a task's next epoch starts only after its previous one is in: memory learns between epochs)
            if self.cfg.rollout.mode == "async" or not in_flight:
                busy = {s.task.task_id: s.epoch for s, _ in in_flight.values()}
                budget = self._admissible()
                while len(in_flight) < limit and budget > 0 and (spec := _next_free(queue, busy)) is not None:
                    busy[spec.task.task_id] = spec.epoch
                    budget -= 1
                    self.dispatched += 1
                    w = min(range(len(self.workers)), key=load.__getitem__)
                    in_flight[self.workers[w].run.remote(spec)] = (spec, w)
                    load[w] += 1
            # 2. collect whatever finished
            if not in_flight:  # admission control is waiting for the learner's next version
                time.sleep(0.2)
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                if ref not in in_flight:  # already re-dispatched with its dead actor's other episodes
                    continue
                spec, w = in_flight.pop(ref)
                load[w] -= 1
                try:
                    traj: Trajectory = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    queue.extendleft(self._replace(w, spec, in_flight, load, e))
                    continue
                self.recorder.record(traj, attempt=spec.attempt)
                finished += 1
            if max_episodes is not None and finished >= max_episodes:
                break

    def _admissible(self) -> int:
        """How many more episodes may start. With the learner on (AReaL): at most (version + η + 1) x batch_size
        episodes dispatched in total, so no trajectory is more than η versions older than the policy that trains
        on it once it reaches the learner; unlimited otherwise."""
        if self.learner_version is None:
            return 1 << 30
        version = self.learner_version()
        if self._v0 is None:  # count from the version this scheduler started at (a run has one per seed)
            self._v0 = version
        from learner.losses import rollout_capacity

        cap = rollout_capacity(version, self.cfg.learner.max_staleness, self.cfg.learner.batch_size, self._v0)
        room = cap - self.dispatched
        if room <= 0:
            self.held_back += 1
        return max(room, 0)

    def _replace(self, w: int, spec: EpisodeSpec, in_flight: dict, load: list[int], err: Exception) -> list[EpisodeSpec]:
        """Actor ``w`` died: start a new one in its place and return its unfinished episodes for re-dispatch."""
        import ray

        lost_refs = [r for r, (_, i) in in_flight.items() if i == w]
        lost = [spec] + [in_flight.pop(r)[0] for r in lost_refs]
        log.warning("rollout actor %d died (%s); replacing it and re-dispatching %d episode(s)", w,
                    type(err).__name__, len(lost))
        try:
            ray.kill(self.workers[w], no_restart=True)
        except Exception:  # already gone
            pass
        self.workers[w] = self.spawn(self.next_worker_id)
        self.next_worker_id += 1
        self.replaced += 1
        if self.replaced > 2 * len(self.workers) * (self.cfg.rollout.max_retries + 1):
            raise RuntimeError(f"rollout actors keep dying ({self.replaced} replaced); last error: {err}")
        load[w] = 0
        again = []
        for s in lost:
            if s.attempt >= self.cfg.rollout.max_retries:
                self.recorder.record(Trajectory(s.episode_id, s.task.task_id, s.epoch, s.seed, s.sample,
                                                error=f"rollout actor died {s.attempt + 1} times"), attempt=s.attempt)
            else:
                again.append(dataclasses.replace(s, attempt=s.attempt + 1))
        return list(reversed(again))  # extendleft reverses: keep the original order

    def shutdown(self) -> None:
        import ray

        for w in self.workers:
            try:
                ray.kill(w, no_restart=True)
            except Exception:  # already gone
                pass
