"""The asynchronous LoRA learner (AReaL-style, issue #6).

- ``learner.buffer``: the trajectory buffer (Redis stream + consumer group; typed msgpack messages; exactly-once
  commit of trained episodes; dead letters) — rollouts call ``TrajectoryBuffer(url, ns).put(traj)``.
- ``learner.losses``: pure torch math — group-normalised advantages, the decoupled PPO objective, the staleness
  filter and AReaL's admission rule (``rollout_capacity``).
- ``learner.learner``: ``Learner`` (base model + peft LoRA, the step, publishing adapters to the pool, checkpoint
  and resume) and ``start_learner`` (the Ray actor).
"""
