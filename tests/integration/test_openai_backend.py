"""The OpenAI backend against a real local vLLM OpenAI server serving epiq-tiny (started once, stopped by PID).

Covers: text + logprobs + token ids from vLLM, ``choices`` forced by vLLM's structured outputs, the fallback
choice matching used for non-vLLM servers, health, pickling, and a clear quick error for an unreachable URL.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import psutil
import pytest

from actors.model_builder import ensure_default_model
from actors.openai_backend import OpenAIBackendError, OpenAIClient, ServerInfo, best_choice
from cluster.config import LLMConfig
from cluster.services import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "You are in the kitchen. You see a coin and a door to the north. >"
CHOICES = ["go north", "take the golden coin", "open door"]


def _stop_tree(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the server and every process under it, then SIGKILL what is left."""
    try:
        root = psutil.Process(proc.pid)
        tree = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    proc.wait(timeout=timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:<port>/v1`` of a vLLM OpenAI server serving epiq-tiny as model ``epiq-tiny``."""
    model = ensure_default_model(ROOT / ".cache")
    tmp = tmp_path_factory.mktemp("vllm-openai")
    port = free_port()
    env = {**os.environ, "VLLM_CACHE_ROOT": str(tmp / "vllm"), "VLLM_CONFIG_ROOT": str(tmp / "vllm-config"),
           "VLLM_RPC_BASE_PATH": str(tmp), "TMPDIR": str(tmp), "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_OMP_THREADS_BIND": str(sorted(os.sched_getaffinity(0))[-1])}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", "epiq-tiny", "--dtype", "float32", "--enforce-eager", "--host", "127.0.0.1",
           "--port", str(port), "--max-model-len", "1024", "--kv-cache-memory-bytes", str(64 * 2**20),
           "--disable-log-stats"]
    log_path = tmp / "server.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        deadline = started + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server not healthy after 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        print(f"\nvLLM OpenAI server start: {time.monotonic() - started:.1f} s")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop_tree(proc)


def _client(url: str, **kwargs) -> OpenAIClient:
    return OpenAIClient(LLMConfig(backend="openai", base_url=url, model="epiq-tiny", api_key_env="EPIQ_TEST_NO_KEY"),
                        **kwargs)


async def _with_client(url: str, fn, **kwargs):
    client = _client(url, **kwargs)
    try:
        return await fn(client)
    finally:
        await client.shutdown()


def test_generate_returns_text_logprobs_and_token_ids(server: str) -> None:
    async def go(client: OpenAIClient):
        sampled = await client.generate(PROMPT, max_tokens=16, temperature=1.0)
        greedy = await client.generate(PROMPT, max_tokens=8)
        from_ids = await client.generate(sampled.prompt_token_ids, max_tokens=8)
        return sampled, greedy, from_ids

    sampled, greedy, from_ids = asyncio.run(_with_client(server, go))
    assert sampled.text.strip()
    assert sampled.adapter_version == 0 and sampled.finish_reason in ("stop", "length")
    for r in (sampled, greedy, from_ids):
        assert r.output_token_ids and len(r.logprobs) == len(r.output_token_ids)
        assert all(lp <= 0.0 for lp in r.logprobs)
    assert sampled.prompt_token_ids and greedy.prompt_token_ids == sampled.prompt_token_ids
    assert from_ids.output_token_ids == greedy.output_token_ids  # same prompt as ids, same greedy output
    assert from_ids.prompt_token_ids == sampled.prompt_token_ids


def test_choices_force_one_of_the_strings(server: str) -> None:
    prompts = [PROMPT, "Your task is to: put a clean mug in cabinet. >", "-= Pantry =- You arrive in the pantry."]

    async def go(client: OpenAIClient):
        jobs = [client.generate(p, max_tokens=4, temperature=t, choices=CHOICES) for p in prompts for t in (0.0, 1.0)]
        return await asyncio.gather(*jobs)

    results = asyncio.run(_with_client(server, go))
    assert all(r.text in CHOICES for r in results)
    for r in results:  # vLLM generated exactly that text: its ids and logprobs are the choice's
        assert r.output_token_ids and len(r.logprobs) == len(r.output_token_ids)


def test_choices_fallback_without_vllm_extras(server: str) -> None:
    """What a non-vLLM server gets: only standard fields, choice matched after generation."""
    async def go(client: OpenAIClient):
        client.server = ServerInfo(models=["epiq-tiny"], vllm=False)
        return await client.generate(PROMPT, max_tokens=8, temperature=1.0, choices=CHOICES)

    result = asyncio.run(_with_client(server, go))
    assert result.text in CHOICES
    assert result.output_token_ids == [] and result.prompt_token_ids == []
    assert result.logprobs  # standard logprobs still come back


def test_health_publish_and_pickle(server: str) -> None:
    async def go(client: OpenAIClient):
        info = await client.health()
        with pytest.raises(NotImplementedError, match="llm.backend: vllm"):
            await client.publish_adapter(1, "/nowhere")
        copy = pickle.loads(pickle.dumps(client))
        try:
            return info, await copy.generate(PROMPT, max_tokens=2)
        finally:
            await copy.shutdown()

    info, result = asyncio.run(_with_client(server, go))
    assert info["vllm"] is True and info["version"] and info["version"].startswith("0.")
    assert result.output_token_ids
    wrong = OpenAIClient(LLMConfig(backend="openai", base_url=server, model="not-served"))

    async def misconfigured() -> None:
        try:
            with pytest.raises(OpenAIBackendError, match="not-served"):
                await wrong.health()
            with pytest.raises(OpenAIBackendError, match="HTTP 404"):
                await wrong.generate(PROMPT, max_tokens=2)
        finally:
            await wrong.shutdown()

    asyncio.run(misconfigured())


def test_unreachable_url_fails_fast_with_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(OpenAIBackendError, match=f"127.0.0.1:{url.split(':')[2]}") as err:
        asyncio.run(_with_client(url, lambda c: c.generate(PROMPT, max_tokens=4)))
    assert time.monotonic() - started < 10
    assert "attempts" in str(err.value) and "ConnectError" in str(err.value)


def test_best_choice_matching() -> None:
    assert best_choice(" Go North.", CHOICES) == "go north"
    assert best_choice("take the golden coin and run", CHOICES) == "take the golden coin"
    assert best_choice("opn the dor", CHOICES) == "open door"
    assert best_choice("", CHOICES) in CHOICES
    with pytest.raises(ValueError):
        OpenAIClient(LLMConfig(backend="openai"))


def test_an_agent_episode_runs_on_the_openai_backend(server: str, tmp_path: Path) -> None:
    """Memory-only mode's agent loop on an OpenAI-compatible endpoint: a TextWorld episode plays to its end."""
    from actors.agent import EpisodeSettings, EpisodeSpec, run_episode
    from actors.envs import AsyncEnv, make_env, task_set
    from cluster.config import Config, EnvConfig

    env_cfg = EnvConfig(num_tasks=1, max_steps=3)
    cfg = Config(llm=LLMConfig(backend="openai", base_url=server, model="epiq-tiny", api_key_env="EPIQ_TEST_NO_KEY"),
                 env=env_cfg)
    task = task_set(env_cfg, ROOT / ".cache")[0]

    async def episode():
        env, llm = AsyncEnv(make_env(env_cfg, ROOT / ".cache")), OpenAIClient(cfg.llm)
        try:
            return await run_episode(EpisodeSpec(task, epoch=0, seed=0), env, llm, None,
                                     EpisodeSettings.from_sections(cfg.llm, cfg.env, cfg.agent, cfg.memory))
        finally:
            await llm.shutdown()
            await env.close()

    traj = asyncio.run(episode())
    assert traj.error is None, traj.error
    assert 1 <= traj.steps <= 3 and len(traj.actions) == traj.steps
    assert all(t.output_ids and len(t.logprobs) == len(t.output_ids) for t in traj.turns)
    assert traj.generated_tokens > 0
