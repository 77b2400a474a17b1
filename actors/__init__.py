"""The acting side: config sections (llm, env, agent), the contracts the agent is written against, the episode loop,
rollout workers, environments, the vLLM inference pool, the OpenAI backend and the default model builder."""
