"""The scheduler: the MemRL protocol (epochs over a task set, per seed) with bounded episodes in flight.

Owns: dispatching episode specs to rollout actors (``rollout.group_size`` episodes of each task per epoch, a
group dispatched together) — continuously (``rollout.mode: async``) or in batches with a
barrier (``sync``) — at most ``rollout.max_in_flight`` at once, and with the LoRA learner on, AReaL's admission
control (``Admission``, ``rollout_capacity``) that keeps trajectories within the staleness bound η; replacing a
dead rollout actor and re-dispatching its unfinished episodes (same episode ids, so the memory counts each
episode once); handing every finished episode to the recorder (``cluster.metrics``: episodes.jsonl, the basis
of resume, per-epoch metrics and the progress line). Everything a call needs is passed to it.

    sched = Scheduler(cfg, tasks, spawn_worker, run_id="run-1")
    sched.run_seed(seed, recorder, done=recorder.finished(seed))   # returns when every epoch of the seed is recorded
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
from common.timer import Timer

log = logging.getLogger(__name__)
UNLIMITED = 1 << 30


def rollout_capacity(version: int, max_staleness: int, batch_size: int, initial_version: int = 0) -> int:
    """AReaL's admission rule: how many trajectories may have been started in total while the learner is at
    ``version``: (steps published + eta + 1) * batch_size. Dispatching no more keeps every trajectory within eta
    versions of the policy that trains on it (with ``publish_interval`` 1; with k, multiply the steps by k)."""
    return (version - initial_version + max_staleness + 1) * batch_size


class Admission:
    """Admission control while a learner trains: at most ``rollout_capacity`` episodes dispatched in total, counted
    from the learner version seen first (a run starts one learner per seed)."""

    def __init__(self, learner_version: Callable[[], int], max_staleness: int, batch_size: int) -> None:
        self.learner_version, self.max_staleness, self.batch_size = learner_version, max_staleness, batch_size
        self.dispatched = 0  # episodes admitted so far
        self.held_back = 0  # dispatch rounds that found no room
        self._v0: int | None = None

    def room(self) -> int:
        """How many more episodes may start now."""
        version = self.learner_version()
        if self._v0 is None:
            self._v0 = version
        room = rollout_capacity(version, self.max_staleness, self.batch_size, self._v0) - self.dispatched
        if room <= 0:
            self.held_back += 1
        return max(room, 0)


def _next_free(queue: deque[EpisodeSpec], busy: dict[str, int]) -> EpisodeSpec | None:
    """Take the first queued episode whose task has nothing in flight, or only episodes of the same epoch (its
    group); queue order is epoch order, so a task's next epoch waits until its whole group is back."""
    for i, spec in enumerate(queue):
        if busy.get(spec.task.task_id, spec.epoch) == spec.epoch:
            del queue[i]
            return spec
    return None


class Scheduler:
    """Runs episodes on a set of rollout actors; ``spawn_worker(i)`` makes actor number i (for replacements, and
    up to ``rollout.actors`` when ``workers``, actors kept from the job's previous seed, are fewer)."""

    def __init__(self, cfg: Config, tasks: list[Any], spawn_worker: Callable[[int], Any], run_id: str = "",
                 workers: list[Any] | None = None, first_id: int = 0) -> None:
        self.cfg, self.tasks, self.spawn, self.run_id = cfg, tasks, spawn_worker, run_id
        self.workers = list(workers or [])[:cfg.rollout.actors]
        self.next_worker_id = first_id
        while len(self.workers) < cfg.rollout.actors:
            self.workers.append(spawn_worker(self.next_worker_id))
            self.next_worker_id += 1
        self.replaced = 0
        self.timer = Timer("dispatch", "wait", "record")

    def run_seed(self, seed: int, recorder: Recorder, *, learn: bool = True, admission: Admission | None = None,
                 done: set[tuple[int, str, int]] | None = None, max_episodes: int | None = None,
                 epochs: int | None = None, tasks: list[Any] | None = None) -> None:
        """Every (epoch, task, sample) of ``seed`` not in ``done``, in epoch order, each finished episode handed to
        ``recorder``. ``learn`` False: frozen evaluation (no memory feedback or writes, nothing trained);
        ``admission``: the learner's admission control (None: no limit); ``max_episodes`` stops early (tests);
        ``epochs`` / ``tasks`` replace the config's epochs and the scheduler's task set for this call."""
        import ray

        done = done or set()
        queue = deque(EpisodeSpec(task, epoch, seed, learn=learn, run_id=self.run_id, sample=g)
                      for epoch in range(epochs or self.cfg.rollout.epochs) for task in (tasks or self.tasks)
                      for g in range(self.cfg.rollout.group_size) if (epoch, task.task_id, g) not in done)
        in_flight: dict[Any, tuple[EpisodeSpec, int]] = {}  # ref -> (spec, worker index)
        load = [0] * len(self.workers)
        limit = self.cfg.rollout.max_in_flight
        finished = 0
        while queue or in_flight:
            # 1. dispatch: async keeps the pipe full; sync only refills once the whole batch is back
            #    (a task's next epoch starts only after its previous one is in: memory learns between epochs)
            with self.timer("dispatch"):
                if self.cfg.rollout.mode == "async" or not in_flight:
                    busy = {s.task.task_id: s.epoch for s, _ in in_flight.values()}
                    budget = admission.room() if admission is not None else UNLIMITED
                    while len(in_flight) < limit and budget > 0 and (spec := _next_free(queue, busy)) is not None:
                        busy[spec.task.task_id] = spec.epoch
                        budget -= 1
                        if admission is not None:
                            admission.dispatched += 1
                        w = min(range(len(self.workers)), key=load.__getitem__)
                        in_flight[self.workers[w].run.remote(spec)] = (spec, w)
                        load[w] += 1
            # 2. collect whatever finished
            if not in_flight:  # admission control is waiting for the learner's next version
                time.sleep(0.2)
                continue
            with self.timer("wait"):
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            # 3. record it (or replace a dead actor and queue its episodes again)
            with self.timer("record"):
                for ref in ready:
                    if ref not in in_flight:  # already re-dispatched with its dead actor's other episodes
                        continue
                    spec, w = in_flight.pop(ref)
                    load[w] -= 1
                    try:
                        traj: Trajectory = ray.get(ref)
                    except ray.exceptions.RayActorError as e:
                        queue.extendleft(self._replace(w, spec, in_flight, load, e, recorder))
                        continue
                    recorder.record(traj, attempt=spec.attempt)
                    finished += 1
            if max_episodes is not None and finished >= max_episodes:
                break
        log.info("seed %d: scheduler time %s", seed, self.timer.as_dict(1))

    def _replace(self, w: int, spec: EpisodeSpec, in_flight: dict, load: list[int], err: Exception,
                 recorder: Recorder) -> list[EpisodeSpec]:
        """Actor ``w`` died: start a new one in its place and return its unfinished episodes for re-dispatch."""
        from cluster.wiring import stop_actors

        lost_refs = [r for r, (_, i) in in_flight.items() if i == w]
        lost = [spec] + [in_flight.pop(r)[0] for r in lost_refs]
        log.warning("rollout actor %d died (%s); replacing it and re-dispatching %d episode(s)", w,
                    type(err).__name__, len(lost))
        stop_actors([self.workers[w]])
        self.workers[w] = self.spawn(self.next_worker_id)
        self.next_worker_id += 1
        self.replaced += 1
        if self.replaced > 2 * len(self.workers) * (self.cfg.rollout.max_retries + 1):
            raise RuntimeError(f"rollout actors keep dying ({self.replaced} replaced); last error: {err}")
        load[w] = 0
        again = []
        for s in lost:
            if s.attempt >= self.cfg.rollout.max_retries:
                recorder.record(Trajectory(s.episode_id, s.task.task_id, s.epoch, s.seed, s.sample,
                                                error=f"rollout actor died {s.attempt + 1} times"), attempt=s.attempt)
            else:
                again.append(dataclasses.replace(s, attempt=s.attempt + 1))
        return list(reversed(again))  # extendleft reverses: keep the original order

    def shutdown(self) -> None:
        from cluster.wiring import stop_actors

        stop_actors(self.workers)
