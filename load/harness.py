"""Starting and stopping what a load run needs: `bentoml serve`, a private redis-server, Locust.

Every process runs in its own process group and is stopped with its children when the
run ends, however it ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "load" / "reports"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} not ready after {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group, SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def process(command: list[str], log: Path, **kwargs) -> Iterator[subprocess.Popen]:
    """Run `command` in its own process group, output to `log`; stop the whole group on exit."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
        try:
            yield proc
        finally:
            stop(proc)


class Redis:
    """A private redis-server on a fixed loopback port, so it can be killed and started again."""

    def __init__(self, stack: ExitStack) -> None:
        if shutil.which("redis-server") is None:
            raise SystemExit("needs redis-server (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        stack.callback(self.kill)
        self.start()

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        self.proc = subprocess.Popen(
            [*command, "--save", "", "--appendonly", "no"],
            stdout=(REPORTS / "redis.log").open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait(self.answers, 10, "redis-server")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class Service:
    """`bentoml serve` on a free port, ready when /readyz answers 200. The model must be in the store."""

    def __init__(
        self, stack: ExitStack, workers: int, redis_url: str | None, target: str = "service:Heimdall", **env
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = dict(os.environ, HEIMDALL_WORKERS=str(workers), BENTOML_DO_NOT_TRACK="true", **env)
        environ.pop("HEIMDALL_REDIS_URL", None)
        if redis_url:
            environ["HEIMDALL_REDIS_URL"] = redis_url
        command = [str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(self.port)]
        self.log = REPORTS / "service.log"
        self.proc = stack.enter_context(process(command, self.log, cwd=ROOT, env=environ))
        wait(self.ready, 120, "bentoml serve")
        cache = "Redis" if redis_url else "in-process cache"
        print(f"service: {self.url}, {workers} worker(s), {cache}", file=sys.stderr)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit(f"the service exited; see {self.log}")
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def workers(self) -> list[int]:
        """PIDs of the worker processes (they hold the model and serve the requests)."""
        import psutil

        children = psutil.Process(self.proc.pid).children(recursive=True)
        return [c.pid for c in children if "_bentoml_impl.worker.service" in " ".join(c.cmdline())]


def fresh_only(rate_per_user: float, pairs_share: str) -> list[str]:
    """Locust options for single /predict requests, every capture new (all misses)."""
    return ["--rate-per-user", f"{rate_per_user:g}", "--repeat-share", "0", "--pairs-share", pairs_share,
            "--batch-weight", "0", "--hit-tolerance", "1"]  # fmt: skip


def locust_command(
    url: str, name: str, users: int, seconds: float, warmup: float, extra: list[str]
) -> list[str]:
    """A headless run of load/locustfile.py writing CSV, HTML and the summary JSON under load/reports/."""
    return [
        str(BIN / "locust"),
        "-f",
        str(ROOT / "load" / "locustfile.py"),
        "--headless",
        "--only-summary",
        "--host",
        url,
        "-u",
        str(users),
        "-r",
        str(max(1, users // 2)),
        "-t",
        f"{int(warmup + seconds)}s",
        "--stop-timeout",
        "10",
        "--warmup",
        str(warmup),
        "--csv",
        str(REPORTS / name),
        "--html",
        str(REPORTS / f"{name}.html"),
        "--summary-json",
        str(REPORTS / f"{name}.json"),
        "--loglevel",
        "WARNING",
        *extra,
    ]


def locust(url: str, name: str, users: int, seconds: float, warmup: float, extra: list[str]) -> dict:
    """One headless Locust run to its end; returns the summary the locustfile wrote (with its exit code)."""
    code = subprocess.run(locust_command(url, name, users, seconds, warmup, extra), cwd=ROOT).returncode
    result = json.loads((REPORTS / f"{name}.json").read_text())
    result["exit_code"] = code
    return result
