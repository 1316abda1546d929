"""Throughput and latency benchmark for the canonical capture set (7 receivers x 4096 samples).

Prints, from one run on this machine:
  (a) the in-process limit: decode + preprocess + ONNX at the best batch size, one core;
  (b) the framework floor: a do-nothing BentoML API receiving the same body;
  (c) the service's cache-miss throughput over HTTP, base64 int16 body (adaptive batching,
      and again with adaptive_batching=false, i.e. the model called per request);
  (d) the same with JSON [[I, Q], ...] lists;
  (e) cache-hit latency, at the server and at the client.

(b)-(d) run side by side: their windows alternate over several rounds and each figure is
the median, so the ratios compare measurements taken in the same minutes.

Usage: python load/bench.py [--seconds 5] [--rounds 3] [--concurrency 32]
Needs the model imported into the BentoML store (`make model`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import itertools
import json
import os
import statistics
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import bentoml
import numpy as np
import psutil
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
from harness import REPORTS, Service  # noqa: E402
from pydantic import TypeAdapter  # noqa: E402

from heimdall.contract.document import Contract  # noqa: E402
from heimdall.contract.features import FeatureExtractor  # noqa: E402
from heimdall.serving import json_body  # noqa: E402
from heimdall.serving.decode import decode_captures, decode_octets  # noqa: E402
from heimdall.serving.inference import OnnxModel  # noqa: E402
from heimdall.serving.schemas import Capture  # noqa: E402
from heimdall.serving.settings import Settings  # noqa: E402
from heimdall.training.examples import example_captures  # noqa: E402

CAPTURES = example_captures()
_PYDANTIC_CAPTURES = TypeAdapter(list[Capture])


# Every fresh body of a run, in any form and to any server, is a capture set not sent before:
# bodies of the two forms with the same k decode to the same IQ (one cache key), and a counter
# restarted per measurement would resend the last one's bodies as cache hits.
_FRESH = itertools.count(10**7)


class Bodies:
    """Request bodies that differ in their first IQ sample: `body(k)` for a given one, `fresh()` for
    one not sent before in this run (a cache miss)."""

    def __init__(self, form: str) -> None:
        self.form = form
        first, *rest = CAPTURES.items()
        self.station, self.iq = first
        if form == "pairs":
            others = [{"station": s, "iq": v.reshape(-1, 2).tolist()} for s, v in rest]
            head_pairs = json.dumps(self.iq.reshape(-1, 2)[1:].tolist())[1:]  # "[..], [..]]"
            self.prefix = f'{{"captures": [{{"station": "{self.station}", "iq": [['.encode()
            self.suffix = (
                "], " + head_pairs + "}, " + json.dumps(others)[1:-1] + '], "encoding": "int16"}'
            ).encode()
        else:
            others = [{"station": s, "iq": base64.b64encode(v.tobytes()).decode()} for s, v in rest]
            encoded = base64.b64encode(self.iq.tobytes()).decode()
            self.prefix = f'{{"captures": [{{"station": "{self.station}", "iq": "'.encode()
            self.tail = encoded[8:]  # everything after the first 6 bytes (3 int16)
            self.suffix = (self.tail + '"}, ' + json.dumps(others)[1:-1] + '], "encoding": "int16"}').encode()

    def body(self, k: int) -> bytes:
        return self.prefix + self.core(k) + self.suffix

    def core(self, k: int) -> bytes:
        """What differs between bodies: the first I/Q pair of the first capture, from k."""
        i, q = k % 60_000 - 30_000, (k // 60_000) % 30_000
        if self.form == "pairs":
            return f"{i}, {q}".encode()
        return base64.b64encode(np.array([i, q, self.iq[2]], dtype="<i2").tobytes())

    def fresh(self) -> bytes:
        return self.body(next(_FRESH))

    def fresh_cores(self, n: int) -> list[bytes]:
        """The cores of n bodies not sent before in this run."""
        return [self.core(next(_FRESH)) for _ in range(n)]


def in_process_limit(repeats: int = 3) -> tuple[int, float, dict[int, float]]:
    """(a): captures per second on one core for the whole in-process pipeline, by batch size."""
    threadpool_limits(1)  # one core: as in a service worker
    model_dir = Path(bentoml.models.get("heimdall-localizer:latest").path)
    contract = Contract.load(model_dir / "contract.json")
    extractor = FeatureExtractor(contract)
    onnx = OnnxModel(model_dir / "model.onnx", contract, threads=1)
    pairs = [(s, base64.b64encode(v.tobytes()).decode()) for s, v in CAPTURES.items()]
    rates = {}
    for batch in (1, 4, 16, 64):
        best = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            n = 0
            while time.perf_counter() - start < 1.0:
                sets = [decode_captures(pairs, "int16", contract, 65536).iq for _ in range(batch)]
                onnx.run(extractor.capture_sets(sets))
                n += batch
            best = max(best, n / (time.perf_counter() - start))
        rates[batch] = best
    best_batch = max(rates, key=rates.get)
    return best_batch, rates[best_batch], rates


def decode_costs(repeats: int = 15, seconds: float = 0.2) -> dict[str, float]:
    """Milliseconds per 4096-sample receiver from request bytes to a validated capture set.

    The forms take turns over `repeats` windows of `seconds`, and each keeps its fastest
    window: a slow spell of this shared machine then weighs on no form's figure.

    JSON bodies are read as the service reads them (`heimdall.serving.json_body`), and once more the
    way BentoML reads a JSON body by default, through pydantic.

    Under the service's garbage-collector settings (see service.py): with CPython's
    defaults, the ~200k lists of a JSON capture set trigger hundreds of collections.
    """
    gc.freeze()
    gc.set_threshold(100_000, 20, 100)
    contract = Contract()
    stations = list(CAPTURES)
    lists = json.dumps(
        [{"station": s, "iq": v.reshape(-1, 2).tolist()} for s, v in CAPTURES.items()]
    ).encode()
    b64 = json.dumps(
        [{"station": s, "iq": base64.b64encode(v.tobytes()).decode()} for s, v in CAPTURES.items()]
    ).encode()
    octets = b"".join(v.tobytes() for v in CAPTURES.values())
    forms = {
        "JSON lists": lambda: decode_captures(json_body.read(lists), "int16", contract, 65536),
        "JSON lists, read by pydantic as BentoML would": lambda: decode_captures(
            _PYDANTIC_CAPTURES.validate_json(lists), "int16", contract, 65536
        ),
        "base64 int16": lambda: decode_captures(json_body.read(b64), "int16", contract, 65536),
        "octet-stream": lambda: decode_octets(octets, stations, "int16", contract, 65536),
    }
    out = dict.fromkeys(forms, float("inf"))
    for _ in range(repeats):
        for name, decode in forms.items():
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                decode()
                n += 1
            out[name] = min(out[name], (time.perf_counter() - start) / n / len(stations) * 1e3)
    return out


def _cpu_seconds(pids: list[int]) -> float:
    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


async def _load(
    url: str, bodies: Bodies | None, fixed: bytes | None, seconds: float, concurrency: int, pids: list[int]
) -> dict:
    """Closed-loop load from `concurrency` connections; with the server's CPU per request (`pids`)."""
    latencies: list[float] = []
    server_ms: list[float] = []
    failures = 0
    statuses: dict[int, int] = {}
    deadline = 0.0

    async def worker(session: aiohttp.ClientSession, record: bool) -> None:
        nonlocal failures
        while time.perf_counter() < deadline:
            body = fixed if fixed is not None else bodies.fresh()
            start = time.perf_counter()
            async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                payload = await r.read()
            if not record:
                continue
            latencies.append(time.perf_counter() - start)
            if r.status != 200:
                failures += 1
                statuses[r.status] = statuses.get(r.status, 0) + 1
            elif fixed is not None and b"server_ms" in payload:
                server_ms.append(json.loads(payload)["server_ms"])

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + 2.0  # warm-up, not counted (batcher warm-up, connections)
        await asyncio.gather(*(worker(session, False) for _ in range(concurrency)))
        deadline = time.perf_counter() + seconds
        start, cpu = time.perf_counter(), _cpu_seconds(pids)
        await asyncio.gather(*(worker(session, True) for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - start, _cpu_seconds(pids) - cpu
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    result = {
        "rps": len(latencies) / elapsed,
        "cpu_ms": cpu / len(latencies) * 1e3,
        "p50_ms": q[49] * 1e3,
        "p95_ms": q[94] * 1e3,
        "failures": failures,
        "statuses": statuses,
    }
    if server_ms:
        sq = statistics.quantiles(server_ms, n=100)
        result.update(server_p50_ms=sq[49], server_p95_ms=sq[94])
    return result


def _median(runs: list[dict]) -> dict:
    """The median of each figure over rounds (failures and statuses summed)."""
    out = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p95_ms", "cpu_ms")}
    out["failures"] = sum(r["failures"] for r in runs)
    out["statuses"] = dict(sum((Counter(r["statuses"]) for r in runs), Counter()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measured window")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of (b)-(d)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections for throughput runs")
    parser.add_argument(
        "--latency-concurrency", type=int, default=4, help="connections for the cache-hit run"
    )
    args = parser.parse_args()

    def run(service, bodies=None, fixed=None, concurrency=args.concurrency):
        url = service.url + "/predict"
        return asyncio.run(_load(url, bodies, fixed, args.seconds, concurrency, service.workers()))

    REPORTS.mkdir(parents=True, exist_ok=True)
    workers = Settings().workers
    rows = []

    print("(a) in-process pipeline, one core ...", flush=True)
    best_batch, limit, by_batch = in_process_limit()
    decode_ms = decode_costs()
    rows.append(("(a) in-process limit, batch " + str(best_batch), f"{limit:,.0f} captures/s", ""))

    print(f"(b)-(d) floor and service, {args.rounds} interleaved rounds ...", flush=True)
    with ExitStack() as stack:
        services = {
            "b": Service(stack, workers, None, target="load/floor_service.py:Floor"),
            "c": Service(stack, workers, None),
            "c'": Service(stack, workers, None, HEIMDALL_ADAPTIVE_BATCHING="false"),
        }
        plan = {
            "b": (services["b"], dict(fixed=Bodies("int16").body(0))),
            "c": (services["c"], dict(bodies=Bodies("int16"))),
            "c'": (services["c'"], dict(bodies=Bodies("int16"))),
            "d": (services["c"], dict(bodies=Bodies("pairs"))),
        }
        # Windows of each measurement alternate, so a slow spell of this shared machine
        # weighs on all of them; each figure is the median over the rounds.
        rounds: dict[str, list[dict]] = {k: [] for k in plan}
        for r in range(args.rounds):
            for k in list(plan)[r % len(plan) :] + list(plan)[: r % len(plan)]:
                service, bodies = plan[k]
                rounds[k].append(run(service, **bodies))
        hit_body = Bodies("int16").body(10**6)
        hit = run(services["c"], fixed=hit_body, concurrency=args.latency_concurrency)
    floor, miss_b64, per_request, miss_json = (_median(rounds[k]) for k in plan)
    ratios = [c["rps"] / min(limit, b["rps"]) for b, c in zip(rounds["b"], rounds["c"], strict=True)]
    gains = [c["rps"] / p["rps"] for c, p in zip(rounds["c"], rounds["c'"], strict=True)]
    floor_ref = min(limit, floor["rps"])

    def cpu(r: dict) -> str:
        return f"server CPU {r['cpu_ms']:.2f} ms/req"

    rows += [
        (
            "(b) framework floor (do-nothing API)",
            f"{floor['rps']:,.0f} req/s",
            f"p95 {floor['p95_ms']:.1f} ms; {cpu(floor)}",
        ),
        (
            "(c) cache miss, base64 int16, adaptive batching",
            f"{miss_b64['rps']:,.0f} req/s",
            f"p95 {miss_b64['p95_ms']:.1f} ms; {cpu(miss_b64)}; "
            f"{miss_b64['rps'] / floor_ref:.0%} of min(a, b) "
            f"(rounds: {', '.join(f'{x:.0%}' for x in ratios)}; median {statistics.median(ratios):.0%})",
        ),
        (
            "(c') cache miss, base64 int16, model called per request",
            f"{per_request['rps']:,.0f} req/s",
            f"p95 {per_request['p95_ms']:.1f} ms; {cpu(per_request)}; batching gives "
            f"x{miss_b64['rps'] / per_request['rps']:.2f} the throughput "
            f"(rounds: {', '.join(f'x{x:.2f}' for x in gains)}) "
            f"at x{miss_b64['cpu_ms'] / per_request['cpu_ms']:.2f} the server CPU per request",
        ),
        (
            "(d) cache miss, JSON [[I, Q], ...] lists",
            f"{miss_json['rps']:,.0f} req/s",
            f"p95 {miss_json['p95_ms']:.1f} ms; {cpu(miss_json)}",
        ),
        (
            f"(e) cache hit, {args.latency_concurrency} connections",
            f"{hit['rps']:,.0f} req/s",
            f"server p50 {hit['server_p50_ms']:.2f} ms, p95 {hit['server_p95_ms']:.2f} ms; "
            f"client p95 {hit['p95_ms']:.1f} ms",
        ),
    ]
    lists_ms = decode_ms.pop("JSON lists")
    rows.append(
        ("decode one 4096-sample receiver, JSON lists", f"{lists_ms:.3f} ms", "from the request bytes")
    )
    form, ms = (
        "JSON lists, read by pydantic as BentoML would",
        decode_ms.pop("JSON lists, read by pydantic as BentoML would"),
    )
    rows.append(
        (
            f"decode one 4096-sample receiver, {form}",
            f"{ms:.3f} ms",
            f"x{ms / lists_ms:.1f} the service's cost",
        )
    )
    for form, ms in decode_ms.items():
        rows.append(
            (f"decode one 4096-sample receiver, {form}", f"{ms:.3f} ms", f"x{lists_ms / ms:.0f} cheaper")
        )
    runs = {"b": floor, "c": miss_b64, "c'": per_request, "d": miss_json, "e": hit}
    failures = ", ".join(f"({k}) {r['statuses']}" for k, r in runs.items() if r["failures"]) or "none"
    print(
        f"\nconcurrency {args.concurrency}, {args.rounds} rounds of {args.seconds:g} s windows (medians), "
        f"{os.cpu_count()} cores, "
        f"failures {failures}; in-process by batch size: "
        + ", ".join(f"{b}: {r:,.0f}/s" for b, r in by_batch.items())
    )
    print("| measurement | throughput | notes |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
