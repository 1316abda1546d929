"""One command for the SLA check and the saturation search (`make load`).

    python load/sla.py [--redis] [--workers 2] [--users 100] [--duration 60]
    python load/sla.py --saturate [--rates 50,100,200,300,400] [--redis]
    python load/sla.py --url http://host:3000 ...   # against a running service

Without --url it starts `bentoml serve service:Heimdall` (the model must be in the store:
`make model`) on a free port, and with --redis a private redis-server, and stops both at
the end. The SLA run drives `--users` users at `--rate-per-user` requests/s through
load/locustfile.py (headless; CSV and HTML reports in load/reports/) and exits with
Locust's exit code: 0 when P95 < 500 ms, no failures and the hit rate is within a few
points of the repeated share. `--saturate` steps the offered rate up, once with base64
int16 bodies and once with JSON pair lists (all fresh captures, /predict only), and
reports the highest rate whose P95 stays under 500 ms with no failures and >= 95% of the
offered rate achieved.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "load" / "reports"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} not ready after {timeout:.0f} s")


@contextmanager
def _process(command: list[str], log: Path, **kwargs) -> Iterator[subprocess.Popen]:
    """Run `command` in its own process group; terminate the whole group on exit."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def _redis(stack: ExitStack) -> str:
    if shutil.which("redis-server") is None:
        raise SystemExit("--redis needs redis-server (apt-get install redis-server)")
    port = _free_port()
    stack.enter_context(
        _process(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            REPORTS / "redis.log",
        )
    )

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    _wait(answers, 10, "redis-server")
    return f"redis://127.0.0.1:{port}/0"


def _service(stack: ExitStack, args: argparse.Namespace) -> str:
    port = _free_port()
    env = dict(os.environ, HEIMDALL_WORKERS=str(args.workers), BENTOML_DO_NOT_TRACK="true")
    env.pop("HEIMDALL_REDIS_URL", None)
    if args.redis:
        env["HEIMDALL_REDIS_URL"] = _redis(stack)
    proc = stack.enter_context(
        _process(
            [str(BIN / "bentoml"), "serve", "service:Heimdall", "--host", "127.0.0.1", "--port", str(port)],
            REPORTS / "service.log",
            cwd=ROOT,
            env=env,
        )
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited; see {REPORTS / 'service.log'}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    _wait(ready, 120, "bentoml serve")
    cache = "Redis" if args.redis else "in-process cache"
    print(f"service: {url}, {args.workers} worker(s), {cache}", file=sys.stderr)
    return url


def locust(url: str, name: str, users: int, seconds: float, extra: list[str], args) -> dict:
    """One headless Locust run; returns the summary the locustfile wrote (with its exit code)."""
    summary = REPORTS / f"{name}.json"
    command = [
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
        f"{int(args.warmup + seconds)}s",
        "--stop-timeout",
        "10",
        "--warmup",
        str(args.warmup),
        "--csv",
        str(REPORTS / name),
        "--html",
        str(REPORTS / f"{name}.html"),
        "--summary-json",
        str(summary),
        "--loglevel",
        "WARNING",
        *extra,
    ]
    code = subprocess.run(command, cwd=ROOT).returncode
    result = json.loads(summary.read_text())
    result["exit_code"] = code
    return result


def sla(url: str, args) -> int:
    extra = [
        "--rate-per-user",
        str(args.rate_per_user),
        "--repeat-share",
        str(args.repeat_share),
        "--pairs-share",
        str(args.pairs_share),
    ]
    result = locust(url, "sla", args.users, args.duration, extra, args)
    print(
        f"reports: {REPORTS}/sla.html, sla_stats.csv; CPU warning from Locust: "
        f"{result['load_generator_cpu_warning']}"
    )
    return result["exit_code"]


def saturate(url: str, args) -> int:
    rates = [float(r) for r in args.rates.split(",")]
    for form, pairs_share in (("int16", "0"), ("pairs", "1")):
        best = None
        for rate in rates:
            users = max(args.users, int(rate))
            extra = [
                "--rate-per-user",
                f"{rate / users:g}",
                "--repeat-share",
                "0",
                "--pairs-share",
                pairs_share,
                "--batch-weight",
                "0",
                "--hit-tolerance",
                "1",
            ]
            result = locust(url, f"saturate-{form}-{rate:g}", users, args.step_seconds, extra, args)
            r, cpu = result["all"], result["load_generator_cpu_warning"]
            ok = r["p95_ms"] < 500 and r["failures"] == 0 and r["rps"] >= 0.95 * rate
            print(
                f"saturate {form:5} offered {rate:6g}/s  achieved {r['rps']:7.1f}/s  "
                f"p50/p95/p99 {r['p50_ms']:.0f}/{r['p95_ms']:.0f}/{r['p99_ms']:.0f} ms  "
                f"failures {r['failures']}  {'ok' if ok else 'SATURATED'}"
                f"{'  (Locust CPU warning)' if cpu else ''}",
                flush=True,
            )
            if not ok:
                break
            best = rate
        print(
            f"saturation {form}: highest offered rate with P95 < 500 ms: "
            f"{best if best is not None else f'< {rates[0]:g}'} requests/s",
            flush=True,
        )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="target a running service instead of starting one")
    p.add_argument("--redis", action="store_true", help="start a private redis-server for the cache")
    p.add_argument("--workers", type=int, default=2, help="service workers (HEIMDALL_WORKERS)")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--rate-per-user", type=float, default=1.0, help="requests/s per user")
    p.add_argument("--duration", type=float, default=60, help="measured seconds, after the warm-up")
    p.add_argument("--warmup", type=float, default=10, help="seconds not counted")
    p.add_argument("--repeat-share", type=float, default=0.8)
    p.add_argument("--pairs-share", type=float, default=0.2)
    p.add_argument("--saturate", action="store_true", help="step the offered rate up instead")
    p.add_argument("--rates", default="50,100,200,300,400,600", help="saturation steps, requests/s")
    p.add_argument("--step-seconds", type=float, default=20, help="measured seconds per saturation step")
    args = p.parse_args()
    REPORTS.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        url = args.url or _service(stack, args)
        return saturate(url, args) if args.saturate else sla(url, args)


if __name__ == "__main__":
    sys.exit(main())
