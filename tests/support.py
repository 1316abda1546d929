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

ROOT = Path(__file__).resolve().parents[1]


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
    """A private redis-server on a free loopback port, so tests can stop and restart it."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10, f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
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
            "HEIMDALL_MAX_LATENCY_MS": "200",
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
