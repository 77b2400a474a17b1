"""The asynchronous LoRA learner (AReaL-style).

- ``learner.config``: its config section (``learner:``).
- ``learner.keys``: its Redis keys and the commit Lua script.
- ``learner.buffer``: the trajectory buffer (Redis stream + consumer group; typed msgpack messages; exactly-once
  commit of trained episodes; dead letters) — rollouts call ``TrajectoryBuffer(url, ns).put(traj)``.
- ``learner.losses``: pure torch math — group-normalised advantages, the decoupled PPO objective, the KL penalty,
  the staleness filter.
- ``learner.learner``: ``Learner`` (base model + peft LoRA, the step in named phases, publishing adapters to the
  pool, checkpoint and resume). The driver makes it a Ray actor (``cluster.wiring.start_learner``); the
  scheduler's admission rule that bounds staleness is ``cluster.scheduler.rollout_capacity``.
"""
