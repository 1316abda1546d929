"""The service against the plain alternatives on the same cores (issue 16).

    python load/compare.py [--rounds 4] [--seconds 5] [--rates R,R,...]

Starts, 2 workers each: this service (adaptive batching; and with it off), a plain
FastAPI + uvicorn + onnxruntime app and a LitServe app with its batching doing the same
work (`load/contenders/`), plus each framework's do-nothing floor. Every request is a
base64 capture set of 7 x 4096 samples not sent before in the run, so every one is a
cache miss. Each contender is measured alone: the others are stopped (SIGSTOP) meanwhile,
and its CPU is its whole process tree's. Rounds interleave the contenders; each figure is
the median over rounds. Prints for each: closed-loop throughput from `--concurrency` wrk
connections (`fresh_bodies.lua`), server CPU per request, P50/P95/P99, the P95 at each
paced (open-loop, aiohttp) rate and the highest rate held with P95 under 50 ms from the
bottom of the ladder up; then the service-to-FastAPI throughput ratio of each round.
Needs the model in the store (`make model`), the `bench` extra (fastapi, litserve) and wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
from bench import Bodies  # noqa: E402
from harness import BIN, REPORTS, Service, free_port, process, wait  # noqa: E402

P95_BOUND_MS = 50.0
WRK_SCRIPT = Path(__file__).resolve().parent / "fresh_bodies.lua"
OURS, PLAIN = "this service (adaptive batching)", "plain FastAPI + uvicorn + onnxruntime"
MAX_RATE = 8_000  # req/s a closed-loop window has fresh bodies prepared for


class App:
    """A contender started from a command."""

    def __init__(self, stack: ExitStack, name: str, command: list[str], port: int, path: str) -> None:
        self.name, self.url = name, f"http://127.0.0.1:{port}{path}"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = stack.enter_context(process(command, REPORTS / f"compare-{name}.log", cwd=ROOT, env=env))
        wait(lambda: _answers(self.url), 120, name)


def _tree(proc: subprocess.Popen) -> list[int]:
    """A contender's processes: what it answers with and what its CPU is counted over."""
    root = psutil.Process(proc.pid)
    return [root.pid, *(c.pid for c in root.children(recursive=True))]


@contextmanager
def _alone(proc: subprocess.Popen, procs: list[subprocess.Popen]) -> Iterator[None]:
    """The block runs with every other contender stopped (SIGSTOP): an idle server still spends
    CPU (LitServe's batching loop polls, ~20% of a core), which the one measured would lose."""
    paused = [pid for other in procs if other is not proc for pid in _tree(other)]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in paused:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _answers(url: str) -> bool:
    async def once() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.post(url, data=Bodies("int16").body(0), headers=_JSON) as r,
            ):
                return r.status == 200
        except aiohttp.ClientError:
            return False

    return asyncio.run(once())


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        with suppress(psutil.NoSuchProcess):  # a process that ended since the tree was read
            total += sum(psutil.Process(p).cpu_times()[:2])
    return total


def _closed(url: str, bodies: Bodies, seconds: float, connections: int, pids: list[int]) -> dict:
    """Closed loop from wrk: `connections` connections, each sending its next request as soon as
    the last is answered. wrk runs one thread in C, so it takes at most one core and a fraction
    of the CPU per request a Python client would: the two cores are left to the server."""
    with tempfile.TemporaryDirectory(prefix="compare-wrk-") as parts:
        folder = Path(parts)
        (folder / "prefix").write_bytes(bodies.prefix)
        (folder / "suffix").write_bytes(bodies.suffix)

        def wrk(window: float) -> dict:
            cores = bodies.fresh_cores(int(MAX_RATE * window) + connections)
            (folder / "cores").write_bytes(b"\n".join(cores) + b"\n")
            command = ["wrk", "-t1", f"-c{connections}", f"-d{window:g}s", "--timeout", "30s",
                       "-s", str(WRK_SCRIPT), url]  # fmt: skip
            done = subprocess.run(
                command, capture_output=True, text=True, env=dict(os.environ, WRK_BODIES=parts)
            )
            if done.returncode != 0 or done.stderr.strip():
                raise SystemExit(f"wrk failed on {url}: {done.stderr.strip() or done.stdout}")
            return json.loads(done.stdout.strip().splitlines()[-1])

        wrk(1.0)  # warm-up: connections opened, the batcher's wait learned
        cpu, generator = _cpu(pids), _children_cpu()
        run = wrk(seconds)
        cpu, generator = _cpu(pids) - cpu, _children_cpu() - generator
    n = max(1, run["requests"])
    return {
        "rps": run["requests"] / run["seconds"],
        "cpu_ms": cpu / n * 1e3,
        "client_ms": generator / n * 1e3,
        "p50": run["p50"],
        "p95": run["p95"],
        "p99": run["p99"],
        "failed": run["non_2xx"] + run["socket_errors"],
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _paced(url: str, bodies: Bodies, rate: float, seconds: float) -> float:
    """P95 (ms) of requests sent at `rate` a second whatever the answers' pace; a failure counts as
    infinitely slow."""
    ms: list[float] = []

    async def one(session: aiohttp.ClientSession) -> None:
        start = time.perf_counter()
        try:
            async with session.post(url, data=bodies.fresh(), headers=_JSON) as r:
                await r.read()
                ok = r.status == 200
        except aiohttp.ClientError:
            ok = False
        ms.append((time.perf_counter() - start) * 1e3 if ok else float("inf"))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks, start = [], time.perf_counter()
        for k in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + k / rate - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(session)))
        await asyncio.gather(*tasks)
    return statistics.quantiles(ms, n=100)[94]


_JSON = {"content-type": "application/json"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=5.0, help="per closed-loop window")
    p.add_argument("--paced-seconds", type=float, default=5.0, help="per paced rate")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument(
        "--rates",
        default="50,100,150,200,300,400,600,800,1000,1200,1500",
        help="paced rates, requests/s (default %(default)s)",
    )
    args = p.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    REPORTS.mkdir(parents=True, exist_ok=True)
    py = str(BIN / "python")
    with ExitStack() as stack:
        ours = Service(stack, 2, None)
        unbatched = Service(stack, 2, None, HEIMDALL_ADAPTIVE_BATCHING="false")
        floor = Service(stack, 2, None, target="load/floor_service.py:Floor")
        fport, lport, lfloor = free_port(), free_port(), free_port()
        uvicorn = [
            py,
            "-m",
            "uvicorn",
            "load.contenders.fastapi_app:app",
            "--workers",
            "2",
            "--log-level",
            "warning",
        ]
        fast = App(stack, "fastapi", [*uvicorn, "--port", str(fport)], fport, "/predict")
        lit = App(
            stack, "litserve", [py, "-m", "load.contenders.litserve_app", str(lport)], lport, "/predict"
        )
        lit_floor = App(
            stack,
            "litserve-floor",
            [py, "-m", "load.contenders.litserve_app", str(lfloor), "floor"],
            lfloor,
            "/predict",
        )
        contenders = {
            OURS: (ours.url + "/predict", ours.proc),
            "this service, batching off": (unbatched.url + "/predict", unbatched.proc),
            PLAIN: (fast.url, fast.proc),
            "LitServe with its batching": (lit.url, lit.proc),
        }
        floors = {
            "BentoML": (floor.url + "/predict", floor.proc),
            "FastAPI": (f"http://127.0.0.1:{fport}/floor", fast.proc),
            "LitServe": (lit_floor.url, lit_floor.proc),
        }
        every = {**contenders, **floors}
        procs = list({proc.pid: proc for _, proc in every.values()}.values())  # FastAPI serves two
        closed: dict[str, list[dict]] = {k: [] for k in every}
        paced: dict[str, dict[float, list[float]]] = {k: {r: [] for r in rates} for k in contenders}
        bodies = Bodies("int16")
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}: closed loop ...", file=sys.stderr, flush=True)
            # The closed-loop windows of a round run back to back, so their ratios compare
            # the same minute of this shared machine.
            for name in _rotated(list(every), r):
                url, proc = every[name]
                with _alone(proc, procs):
                    closed[name].append(_closed(url, bodies, args.seconds, args.concurrency, _tree(proc)))
            # Paced rates climb together; a contender stops climbing in a round at its
            # first rate over the bound (the rates above it count as not held).
            over: set[str] = set()
            for rate in rates:
                print(f"round {r + 1}/{args.rounds}: {rate:g} req/s paced ...", file=sys.stderr, flush=True)
                for name in _rotated(list(contenders), r):
                    p95 = math.inf
                    url, proc = contenders[name]
                    if name not in over:
                        with _alone(proc, procs):
                            p95 = asyncio.run(_paced(url, bodies, rate, args.paced_seconds))
                    paced[name][rate].append(p95)
                    if p95 >= P95_BOUND_MS:
                        over.add(name)
    _report(args, contenders, floors, closed, paced)


def _rotated(names: list[str], r: int) -> list[str]:
    return names[r % len(names) :] + names[: r % len(names)]


def _report(args: argparse.Namespace, contenders: dict, floors: dict, closed: dict, paced: dict) -> None:
    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in closed[name])

    print(
        f"\n{args.rounds} interleaved rounds, {args.concurrency} connections (wrk), {args.seconds:g} s "
        f"closed-loop windows, {args.paced_seconds:g} s per paced rate (aiohttp), {os.cpu_count()} cores; "
        "medians over rounds"
    )
    print("| contender | closed-loop throughput | server CPU per request | P50/P95/P99 | "
          f"highest paced rate with P95 < {P95_BOUND_MS:g} ms | P95 at each paced rate |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in contenders:
        p95s = {rate: statistics.median(v) for rate, v in paced[name].items()}
        held = 0.0
        for rate, v in p95s.items():  # the rates held from the bottom of the ladder up
            if v >= P95_BOUND_MS:
                break
            held = rate
        failed = sum(x["failed"] for x in closed[name])
        print(
            f"| {name} | {med(name, 'rps'):,.0f} req/s{f' ({failed} failed)' if failed else ''} | "
            f"{med(name, 'cpu_ms'):.2f} ms | "
            f"{med(name, 'p50'):.0f}/{med(name, 'p95'):.0f}/{med(name, 'p99'):.0f} ms | "
            f"{f'{held:g} req/s' if held else 'none'} | "
            + ", ".join(f"{rate:g}: {_ms(v)}" for rate, v in p95s.items())
            + " |"
        )
    print(
        "| framework floor (do-nothing API, same body) | throughput | server CPU per request | P50/P95/P99 |"
    )
    print("|---|---|---|---|")
    for name in floors:
        print(
            f"| {name} | {med(name, 'rps'):,.0f} req/s | {med(name, 'cpu_ms'):.2f} ms | "
            f"{med(name, 'p50'):.0f}/{med(name, 'p95'):.0f}/{med(name, 'p99'):.0f} ms |"
        )
    ratios = [a["rps"] / b["rps"] for a, b in zip(closed[OURS], closed[PLAIN], strict=True)]
    client = statistics.median(x["client_ms"] for runs in closed.values() for x in runs)
    print(
        f"\nclosed-loop throughput, {OURS} / {PLAIN}, by round: "
        + ", ".join(f"{x:.2f}" for x in ratios)
        + f" (median {statistics.median(ratios):.2f}); wrk's CPU per request {client:.3f} ms"
    )


def _ms(v: float) -> str:
    if not math.isfinite(v):
        return "over"
    return f"{v:.1f} ms" if v < 10 else f"{v:.0f} ms"


if __name__ == "__main__":
    main()
