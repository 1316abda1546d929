"""The service against the plain alternatives on the same cores (issue 16).

    python load/compare.py [--rounds 4] [--seconds 5] [--rates R,R,...]

Starts, 2 workers each: this service (adaptive batching; and with it off), a plain
FastAPI + uvicorn + onnxruntime app and a LitServe app with its batching doing the same
work (`load/contenders/`), plus each framework's do-nothing floor. Every request is a
distinct base64 capture set of 7 x 4096 samples (all cache misses). Rounds interleave the
contenders; each figure is the median over rounds. Prints for each: closed-loop
throughput from `--concurrency` connections, server CPU per request, P50/P95/P99, the P95
at each paced (open-loop) rate and the highest rate with P95 under 50 ms.
Needs the model in the store (`make model`) and the `bench` extra (fastapi, litserve).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
from bench import Bodies  # noqa: E402
from harness import BIN, REPORTS, Service, free_port, process, wait  # noqa: E402

P95_BOUND_MS = 50.0


class App:
    """A contender started from a command; `pids` are its process tree (for its CPU)."""

    def __init__(self, stack: ExitStack, name: str, command: list[str], port: int, path: str) -> None:
        self.name, self.url = name, f"http://127.0.0.1:{port}{path}"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = stack.enter_context(process(command, REPORTS / f"compare-{name}.log", cwd=ROOT, env=env))
        wait(lambda: _answers(self.url), 120, name)

    def pids(self) -> list[int]:
        root = psutil.Process(self.proc.pid)
        return [root.pid, *(c.pid for c in root.children(recursive=True))]


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


def _quantiles(ms: list[float]) -> tuple[float, float, float]:
    if len(ms) < 2:
        return (float("nan"),) * 3
    q = statistics.quantiles(ms, n=100)
    return q[49], q[94], q[98]


async def _closed(url: str, bodies: Bodies, seconds: float, connections: int, pids: list[int]) -> dict:
    ms: list[float] = []
    failed = 0
    counter = iter(range(10**9))

    async def worker(session: aiohttp.ClientSession, until: float, record: bool) -> None:
        nonlocal failed
        while time.perf_counter() < until:
            start = time.perf_counter()
            async with session.post(url, data=bodies.body(next(counter)), headers=_JSON) as r:
                await r.read()
            if record:
                ms.append((time.perf_counter() - start) * 1e3)
                failed += r.status != 200

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(worker(session, warm, False) for _ in range(connections)))
        start, cpu = time.perf_counter(), _cpu(pids)
        until = start + seconds
        await asyncio.gather(*(worker(session, until, True) for _ in range(connections)))
        elapsed, cpu = time.perf_counter() - start, _cpu(pids) - cpu
    p50, p95, p99 = _quantiles(ms)
    n = max(1, len(ms))
    return {
        "rps": len(ms) / elapsed,
        "cpu_ms": cpu / n * 1e3,
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "failed": failed,
    }


async def _paced(url: str, bodies: Bodies, rate: float, seconds: float) -> float:
    """P95 (ms) of requests sent at `rate` a second whatever the answers' pace; a failure counts as
    infinitely slow."""
    ms: list[float] = []
    counter = iter(range(10**9, 2 * 10**9))

    async def one(session: aiohttp.ClientSession) -> None:
        start = time.perf_counter()
        try:
            async with session.post(url, data=bodies.body(next(counter)), headers=_JSON) as r:
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
        default="50,100,150,200,300,400,600,800,1000",
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
            "this service (adaptive batching)": (ours.url + "/predict", lambda: ours.workers()),
            "this service, batching off": (unbatched.url + "/predict", lambda: unbatched.workers()),
            "plain FastAPI + uvicorn + onnxruntime": (fast.url, fast.pids),
            "LitServe with its batching": (lit.url, lit.pids),
        }
        floors = {
            "BentoML": (floor.url + "/predict", lambda: floor.workers()),
            "FastAPI": (f"http://127.0.0.1:{fport}/floor", fast.pids),
            "LitServe": (lit_floor.url, lit_floor.pids),
        }
        closed: dict[str, list[dict]] = {k: [] for k in {**contenders, **floors}}
        paced: dict[str, dict[float, list[float]]] = {k: {r: [] for r in rates} for k in contenders}
        bodies = Bodies("int16")
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
            names = list({**contenders, **floors})
            for name in names[r % len(names) :] + names[: r % len(names)]:
                url, pids = {**contenders, **floors}[name]
                closed[name].append(asyncio.run(_closed(url, bodies, args.seconds, args.concurrency, pids())))
                if name in contenders:
                    for rate in rates:
                        paced[name][rate].append(asyncio.run(_paced(url, bodies, rate, args.paced_seconds)))

    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in closed[name])

    print(
        f"\n{args.rounds} interleaved rounds, {args.concurrency} connections, {args.seconds:g} s closed-loop "
        f"windows, {args.paced_seconds:g} s per paced rate, {os.cpu_count()} cores; medians over rounds"
    )
    print("| contender | closed-loop throughput | server CPU per request | P50/P95/P99 | "
          f"highest paced rate with P95 < {P95_BOUND_MS:g} ms | P95 at each paced rate |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in contenders:
        p95s = {rate: statistics.median(v) for rate, v in paced[name].items()}
        held = [rate for rate, v in p95s.items() if v < P95_BOUND_MS]
        failed = sum(x["failed"] for x in closed[name])
        print(
            f"| {name} | {med(name, 'rps'):,.0f} req/s{f' ({failed} failed)' if failed else ''} | "
            f"{med(name, 'cpu_ms'):.2f} ms | "
            f"{med(name, 'p50'):.0f}/{med(name, 'p95'):.0f}/{med(name, 'p99'):.0f} ms | "
            f"{f'{max(held):g}' if held else 'none'} req/s | "
            + ", ".join(f"{rate:g}: {v:.0f} ms" for rate, v in p95s.items())
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


if __name__ == "__main__":
    main()
