"""The asynchronous LoRA learner: trajectory buffer, staleness gate, decoupled PPO, adapter publishing (issue #6)."""
