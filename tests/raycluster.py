"""A multi-node Ray on this machine for integration tests, started with the ``ray start`` CLI and stopped by PID.

Each node is one ``ray start --block`` process in its own session, with its own free ports, custom resources and
temp dir under one short private folder; the cluster uses Ray 2.60 token auth with a fresh token passed by
environment (nothing is written to ~/.ray). The dashboard runs on the head, so ``ray job submit`` works against
``cluster.dashboard_url``. ``stop()`` ends exactly what it started: every node's process group, then any
process it started that outlived its parent (descendants recorded before stopping, and anything whose command
line names the private temp folder). Never ``ray stop``.

    with LocalRayCluster() as rc:
        rc.start_head(num_cpus=1, resources={"rollout": 1})
        rc.add_node(num_cpus=1, resources={"inference": 1})
        subprocess.run([rc.ray, "job", "submit", "--address", rc.dashboard_url, "--", "python", "x.py"], env=rc.env)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from cluster.services import free_port, stop_pids

BIN = Path(sys.executable).parent  # the project's venv: `ray`, and the `python` that jobs run


class NodeExited(RuntimeError):
    """A node's `ray start --block` process exited while the cluster waited for it."""


class LocalRayCluster:
    def __init__(self, object_store_mb: int = 256) -> None:
        self.object_store_mb = object_store_mb
        self.root = Path(tempfile.mkdtemp(prefix="epiq-rc-"))  # short: Ray's socket paths must stay under 107 bytes
        self.token = secrets.token_hex(16)
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"  # `ray job submit -- python` runs the head's python
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
        self.env = {**env, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # SIGTERM stops a node at once (no 30 s drain)
        self.ray = str(BIN / "ray")
        self.nodes: list[subprocess.Popen] = []
        self.gcs_address = ""
        self.dashboard_url = ""

    # -- lifecycle
    def __enter__(self) -> "LocalRayCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_head(self, num_cpus: float, resources: dict[str, float] | None = None, timeout: float = 120) -> None:
        port, dashboard = free_port(), free_port()
        self.gcs_address = f"{self._ip(0)}:{port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard}"
        self._start("head", ["--head", f"--port={port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}"],
                    num_cpus, resources)
        deadline = time.monotonic() + timeout
        while True:  # the job API answers once the dashboard's job module is up
            try:
                self.api("/api/jobs/")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                self._check_alive("head")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Ray head did not answer on {self.dashboard_url} in {timeout}s:\n{self._log(0)}")
                time.sleep(1)
        self._wait_new_node(set(), deadline)

    def add_node(self, num_cpus: float, resources: dict[str, float] | None = None, timeout: float = 120,
                 attempts: int = 2) -> None:
        """Start a worker node and wait until it is ALIVE. A `ray start` that exits before registering is started
        again, up to ``attempts`` times in all, each with its own ``timeout``: under a heavy load a raylet can
        miss Ray's fixed 30 s wait for its node to register with the GCS (ray/_private/node.py, no setting
        changes it), and the node's process then exits with an error although the cluster is fine. Any other
        failure, or the last one, is raised. Only a node the cluster had not seen before counts as the new one
        (a killed attempt may stay ALIVE in the GCS until its health check times out)."""
        label = f"node{len(self.nodes)}"
        for attempt in range(1, attempts + 1):
            seen = {n.get("node_id") for n in self.list_nodes()}
            self._start(label, [f"--address={self.gcs_address}"], num_cpus, resources)
            try:
                self._wait_new_node(seen, time.monotonic() + timeout)
                return
            except NodeExited:
                others_alive = all(p.poll() is None for p in self.nodes[:-1])
                if attempt == attempts or not others_alive:
                    raise
                self._discard_last(attempt)

    def _discard_last(self, attempt: int) -> None:
        """Forget the last node, whose `ray start` has exited: end what is left of its session and keep its temp
        dir and log under ``<label>.failed-<attempt>`` (removed with the cluster's folder by ``stop``)."""
        proc = self.nodes.pop()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        label = f"node{len(self.nodes)}"
        for path in (self.root / label, self.root / f"{label}.log"):
            if path.exists():
                path.rename(path.with_name(path.name.replace(label, f"{label}.failed-{attempt}", 1)))

    def _wait_new_node(self, seen: set, deadline: float) -> None:
        """Wait until a node whose id is not in ``seen`` is ALIVE: the one the last ``ray start`` brings up."""
        index = len(self.nodes) - 1
        label = "head" if index == 0 else f"node{index}"
        while not [n for n in self.list_nodes() if n.get("state") == "ALIVE" and n.get("node_id") not in seen]:
            self._check_alive(label)
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray {label} did not register:\n{self._log(index)}")
            time.sleep(1)

    def _start(self, label: str, args: list[str], num_cpus: float, resources: dict[str, float] | None) -> None:
        temp = self.root / label
        temp.mkdir()
        ports = [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
        cmd = [self.ray, "start", "--block", *args, f"--node-ip-address={self._ip(len(self.nodes))}", f"--temp-dir={temp}",
               f"--num-cpus={num_cpus:g}", "--num-gpus=0", f"--resources={json.dumps(resources or {})}",
               f"--object-store-memory={self.object_store_mb * 2**20}", "--disable-usage-stats", *ports]
        log = open(self.root / f"{label}.log", "w")
        self.nodes.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True, cwd=self.root))
        log.close()

    @staticmethod
    def _ip(index: int) -> str:
        """Node ``index``'s address: its own loopback IP, like a pod's IP (`ray start` turns 127.0.0.1 into the
        machine's outward address, so the nodes use 127.0.0.2, 127.0.0.3, ...; all traffic stays on loopback)."""
        return f"127.0.0.{2 + index}"

    def _check_alive(self, label: str) -> None:
        dead = [(i, p) for i, p in enumerate(self.nodes) if p.poll() is not None]
        if dead:
            i, proc = dead[0]
            raise NodeExited(f"`ray start` ({label}) exited with code {proc.returncode}:\n{self._log(i)}")

    def _log(self, index: int) -> str:
        """The end of node ``index``'s `ray start` output (the temp folder is removed by ``stop``)."""
        path = self.root / f"{'head' if index == 0 else f'node{index}'}.log"
        return path.read_text()[-2000:] if path.is_file() else ""

    def stop(self, timeout: float = 20) -> None:
        owned: dict[int, float] = {}
        for proc in self.nodes:
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    owned[child.pid] = child.create_time()
            except psutil.NoSuchProcess:
                pass
        owned.update(self.stray_processes())
        for proc in reversed(self.nodes):  # worker nodes first, then the head: each `ray start` stops its processes
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what this node started is left in it
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout)
        stop_pids(owned, timeout=timeout)
        stop_pids(self.stray_processes(), timeout=timeout)
        self.nodes = []
        shutil.rmtree(self.root, ignore_errors=True)

    def stray_processes(self) -> dict[int, float]:
        """Live processes whose command line names this cluster's private temp folder (pid -> create_time)."""
        out = {}
        for p in psutil.process_iter(["pid", "cmdline", "create_time", "status"]):
            if p.info["status"] != psutil.STATUS_ZOMBIE and str(self.root) in " ".join(p.info["cmdline"] or []):
                out[p.info["pid"]] = p.info["create_time"]
        return out

    # -- the head's HTTP API (jobs, state), with the cluster's token
    def api(self, path: str, timeout: float = 10) -> Any:
        req = urllib.request.Request(self.dashboard_url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def list_nodes(self) -> list[dict]:
        """Every node the cluster has seen: node_id, state, resources_total, ..."""
        try:
            return self.api("/api/v0/nodes?limit=100&detail=1")["data"]["result"]["result"]
        except (urllib.error.URLError, ConnectionError, OSError, KeyError, TypeError):
            return []

    def list_actors(self) -> list[dict]:
        """Every actor the cluster has seen, dead ones included: class_name, node_id, state, job_id, ..."""
        return self.api("/api/v0/actors?limit=10000&detail=1")["data"]["result"]["result"]

    def job(self, submission_id: str) -> dict:
        return self.api(f"/api/jobs/{submission_id}")

    def submit(self, submission_id: str, cwd: Path, entrypoint: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir .` from ``cwd``, as a user would; waits for the job, streaming its output."""
        cmd = [self.ray, "job", "submit", "--address", self.dashboard_url, "--submission-id", submission_id,
               "--working-dir", ".", "--", *entrypoint]
        return subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)
