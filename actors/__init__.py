"""Rollout actors, the agent episode loop, environment adapters and the vLLM inference pool (issue #4)."""
