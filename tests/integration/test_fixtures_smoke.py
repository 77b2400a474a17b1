"""The shared fixtures give a real valkey server and a real Ray."""

import pytest


def test_redis_server_answers_with_password(redis_client, redis_server):
    assert redis_client.ping()
    assert redis_client.execute_command("XADD", "s", "*", "k", "v")
    import redis

    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=redis_server.port).ping()


@pytest.mark.slow
def test_ray_runs_a_task(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0)
    def add(a, b):
        return a + b

    assert ray.get(add.remote(2, 3)) == 5
