"""The inference pool: vLLM engines (one per Ray actor) and the client that balances requests over them.

Owns: ``LLMEngine`` — a plain class holding one async vLLM engine (``AsyncLLM``) built from ``LLMConfig``,
bound to its own CPU cores on CPU, serving the newest published LoRA adapter; ``LLMPool`` — the client over the
engine actors (least outstanding requests first; an ``LLMClient`` of ``actors.contracts``, returning its
``GenerationResult``). The driver makes engines into Ray actors (``cluster.wiring.start_pool``).

An adapter version is bound when a request starts: ``publish_adapter`` changes what *new* requests use,
requests already running finish on their version. Version 0 is the base model.

    pool = cluster.wiring.start_pool(cfg.llm, model_path)      # the driver's wiring; needs ray.init() first
    result = await pool.generate("go north", max_tokens=8)
    await pool.publish_adapter(1, "/path/to/adapter"); await pool.shutdown()
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from typing import Any

from actors.config import LLMConfig
from actors.contracts import GenerationResult

MAX_CONCURRENCY = 1024  # requests one engine actor accepts at once (vLLM batches them)


def engine_cores(index: int, cpus_per_engine: int, available: list[int] | None = None) -> list[int]:
    """The cores engine ``index`` is bound to: consecutive blocks of ``cpus_per_engine``, wrapping around."""
    cores = sorted(available if available is not None else os.sched_getaffinity(0))
    return [cores[(index * cpus_per_engine + j) % len(cores)] for j in range(cpus_per_engine)]


class LLMEngine:
    """One vLLM ``AsyncLLM`` plus the current adapter version. A plain class: Ray makes it an actor."""

    def __init__(self, cfg: LLMConfig, model_path: str, index: int = 0) -> None:
        self.cfg, self.model_path, self.index = cfg, model_path, index
        self._rpc_dir: str | None = None
        if "VLLM_RPC_BASE_PATH" not in os.environ:  # vLLM's ZMQ socket files, otherwise loose in /tmp
            self._rpc_dir = os.environ["VLLM_RPC_BASE_PATH"] = tempfile.mkdtemp(prefix="epiq-vllm-")
        self.cores: list[int] = []
        if cfg.gpus_per_engine == 0:  # vLLM-CPU's default binding puts every engine on core 0
            self.cores = engine_cores(index, cfg.cpus_per_engine)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, self.cores))

        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=model_path, dtype=cfg.dtype, max_model_len=cfg.max_model_len, seed=cfg.seed,
            kv_cache_memory_bytes=cfg.kv_cache_mb * 2**20, enforce_eager=cfg.enforce_eager,
            enable_lora=cfg.enable_lora, max_lora_rank=cfg.max_lora_rank,
            max_loras=cfg.max_loras, disable_log_stats=True,
        )
        self.engine: Any = AsyncLLM.from_engine_args(args)
        self.adapter_version = 0
        self._lora: Any = None  # LoRARequest for new requests; None = base model
        self._ids: dict[str, int] = {}  # adapter folder -> vLLM LoRA id
        self._outstanding = 0

    async def generate(self, prompt: str | list[int], max_tokens: int = 16, temperature: float = 0.0,
                       top_p: float = 1.0, stop: list[str] | None = None,
                       choices: list[str] | None = None, min_tokens: int = 0,
                       adapter: bool = True) -> GenerationResult:
        """Run one request to completion; ``choices`` forces the output to be exactly one of them;
        ``min_tokens`` suppresses end and stop tokens until that many are out (benchmarks replay exact lengths);
        ``adapter`` False: the base model, whatever adapter is served."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        structured = None
        if choices:
            # The grammar admits every tokenisation of a choice, down to one byte per token: leave room for
            # the longest choice spelled byte by byte plus its end token, or it may be cut off.
            max_tokens = max(max_tokens, max(len(c.encode()) for c in choices) + 1)
            structured = StructuredOutputsParams(choice=list(choices))
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop,
                                min_tokens=min_tokens, logprobs=0, structured_outputs=structured, output_kind=RequestOutputKind.FINAL_ONLY)
        request = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": list(prompt)}
        # bound now: a later publish does not affect this request
        version, lora = (self.adapter_version, self._lora) if adapter else (0, None)
        self._outstanding += 1
        try:
            final = None
            async for out in self.engine.generate(request, params, uuid.uuid4().hex, lora_request=lora):
                final = out
        finally:
            self._outstanding -= 1
        if final is None or not final.finished:
            raise RuntimeError(f"vLLM ended the request without a final output (engine {self.index})")
        completion = final.outputs[0]
        token_ids = list(completion.token_ids)
        logprobs = [float(step[tok].logprob) for step, tok in zip(completion.logprobs or [], token_ids)]
        return GenerationResult(text=completion.text, prompt_token_ids=list(final.prompt_token_ids or []),
                                output_token_ids=token_ids, logprobs=logprobs, adapter_version=version,
                                finish_reason=completion.finish_reason)

    async def publish_adapter(self, version: int, path: str) -> int:
        """Serve new requests with LoRA ``version`` from ``path`` (0 = base model); returns the version."""
        if version < 0:
            raise ValueError(f"adapter version must be >= 0, got {version}")
        if version == 0:
            self.adapter_version, self._lora = 0, None
            return 0
        if not self.cfg.enable_lora:
            raise ValueError("publish_adapter needs llm.enable_lora: true (the engine was started without LoRA)")
        from vllm.lora.request import LoRARequest

        # vLLM caches adapters by integer id: one id per adapter folder, so a version number published again
        # from another folder (a new seed's learner starts at v1 again) serves the new weights, never cached ones
        lora_id = self._ids.get(str(path), len(self._ids) + 1)
        lora = LoRARequest(f"v{version}-{lora_id}", lora_id, str(path))
        if not await self.engine.add_lora(lora):  # load now: errors surface here, not in the next request
            raise RuntimeError(f"engine {self.index} could not load LoRA version {version} from {path}")
        self._ids[str(path)] = lora_id
        self.adapter_version, self._lora = version, lora
        return version

    async def health(self) -> dict[str, Any]:
        """Raises if the engine died; otherwise a short status."""
        await self.engine.check_health()
        return {"engine": self.index, "model": self.model_path, "adapter_version": self.adapter_version,
                "outstanding": self._outstanding, "cores": self.cores}

    def shutdown(self) -> None:
        """Stop the engine's processes and remove the socket folder it made (idempotent)."""
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()
            del engine  # AsyncLLM.__del__ shuts down again: let it run now, not at interpreter exit
        if self._rpc_dir:
            shutil.rmtree(self._rpc_dir, ignore_errors=True)


class LLMPool:
    """Client over engine actor handles: least outstanding requests first. Picklable (handles and counters).
    ``names``: the engines' Ray actor names when they have them (``cluster.wiring.start_pool`` names them)."""

    def __init__(self, handles: list[Any], names: list[str] | None = None) -> None:
        if not handles:
            raise ValueError("an LLMPool needs at least one engine")
        if names is not None and len(names) != len(handles):
            raise ValueError(f"an LLMPool of {len(handles)} engines got {len(names)} names")
        self.handles = list(handles)
        self.names = list(names or [])
        self._outstanding = [0] * len(handles)
        self._next = 0  # rotates ties, so idle engines share the load

    def _pick(self) -> int:
        n = len(self.handles)
        i = min(range(n), key=lambda k: (self._outstanding[k], (k - self._next) % n))
        self._next = (i + 1) % n
        return i

    async def generate(self, prompt: str | list[int], max_tokens: int = 16, temperature: float = 0.0,
                       top_p: float = 1.0, stop: list[str] | None = None,
                       choices: list[str] | None = None, min_tokens: int = 0,
                       adapter: bool = True) -> GenerationResult:
        """Send one request to the least busy engine and return its result."""
        i = self._pick()
        self._outstanding[i] += 1
        try:
            return await self.handles[i].generate.remote(prompt, max_tokens, temperature, top_p, stop, choices,
                                                         min_tokens, adapter)
        finally:
            self._outstanding[i] -= 1

    async def publish_adapter(self, version: int, path: str) -> None:
        """Publish LoRA ``version`` to every engine; returns once all serve it to new requests."""
        await asyncio.gather(*(h.publish_adapter.remote(version, str(path)) for h in self.handles))

    async def health(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(h.health.remote() for h in self.handles)))

    async def shutdown(self) -> None:
        """Stop every engine's vLLM processes, then the actors."""
        import ray

        results = await asyncio.gather(*(h.shutdown.remote() for h in self.handles), return_exceptions=True)
        for h in self.handles:
            ray.kill(h)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:  # every actor is stopped already; still say that an engine failed to shut down cleanly
            raise errors[0]

