"""Helpers for tests that start real servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
# Positions agree to the model's float32 resolution (~10 cm; a float32 ulp at 100 km is 8 mm),
# not bit for bit: a batched ONNX run, or BLAS on one thread (the service) against any number
# (the test process), may round the mel matmul and the graph differently.
POSITION_TOLERANCE_DEG = 1e-6


def is_ready(url: str) -> bool:
    """Whether GET `url` (a /readyz) answers 200 now."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


class RedisServer:
    """A private redis-server on a free loopback port, so tests can stop, restart and pause it.

    With `password` it requires one; with `tls` (a certificate and key, PEM, the certificate
    also serving as the CA) its port speaks TLS only and `url` is a `rediss://` URL.
    """

    def __init__(
        self, workdir: Path, password: str | None = None, tls: tuple[Path, Path] | None = None
    ) -> None:
        self.port = free_port()
        self.workdir, self.password, self.tls = workdir, password, tls
        self.proc: subprocess.Popen | None = None
        auth = f":{password}@" if password else ""
        scheme, query = ("rediss", f"?ssl_ca_certs={tls[0]}") if tls else ("redis", "")
        self.url = f"{scheme}://{auth}127.0.0.1:{self.port}/0{query}"

    def start(self) -> None:
        args = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir)]
        if self.tls:
            cert, key = map(str, self.tls)
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", cert]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with redis.Redis.from_url(self.url, socket_timeout=0.2) as client:
            wait_until(lambda: _pings(client), 10, f"redis-server on port {self.port}", interval=0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM a process started with start_new_session=True and all it spawned; SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Serve:
    """`bentoml serve service:Heimdall` as operators run it, one worker, on a free port.

    Without `redis_url` the service runs with its in-process cache. `extra_env` adds to or
    overrides its environment; with `wait=False` the caller watches start-up itself.
    """

    def __init__(
        self,
        tag: str,
        log: Path,
        redis_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "HEIMDALL_MODEL_TAG": tag,
            "HEIMDALL_CACHE_RETRY_S": "1",
            "HEIMDALL_CACHE_TIMEOUT_MS": "200",
            "HEIMDALL_WORKERS": "1",
            **(extra_env or {}),
        }
        if redis_url is not None:
            env["HEIMDALL_REDIS_URL"] = redis_url
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bentoml", "serve", "service:Heimdall", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            wait_until(self._ready, 90, "bentoml serve")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def predict(self, body: dict, **extra) -> httpx.Response:
        return httpx.post(f"{self.url}/predict", json={**body, **extra}, timeout=30)

    def stop(self) -> None:
        stop_group(self.proc)
