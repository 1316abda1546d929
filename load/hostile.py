"""Hostile and careless clients against a real service: the figures issue 12 asks for.

    python load/hostile.py slow-bodies  # 160 clients sending a body a byte a second
    python load/hostile.py amplify      # bodies of empty `iq` lists at the size limit, 4 clients
    python load/hostile.py fuzz-log     # bad requests of every kind: log lines written
    python load/hostile.py oom          # Redis at maxmemory refusing writes: the hit rate

Each starts `bentoml serve service:Heimdall` (2 workers; the model must be in the store:
`make model`), measures a normal client (one fresh capture set at a time, a new connection
each: `faults.Probe`) beside the hostile ones, prints its figures and a verdict, and exits 0
when the verdict holds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import threading
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import redis

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from faults import Memory, Probe  # noqa: E402
from harness import REPORTS, Redis, Service  # noqa: E402

from heimdall.serving.settings import Settings  # noqa: E402
from heimdall.training.examples import example_captures, request_body  # noqa: E402


def _p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")


def _probe_for(probe: Probe, seconds: float) -> tuple[list[int], list[float]]:
    statuses, ms = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status, took = probe.once()
        statuses.append(status)
        ms.append(took)
    return statuses, ms


def _summary(name: str, statuses: list[int], ms: list[float]) -> str:
    ok = sum(s == 200 for s in statuses)
    return (
        f"  {name}: {len(statuses)} requests, {100 * ok / max(1, len(statuses)):.1f}% answered 200, "
        f"P50 {_p(ms, 50):.1f} ms, P95 {_p(ms, 95):.1f} ms"
    )


def slow_bodies(args) -> bool:
    with ExitStack() as stack:
        service = Service(stack, 2, None)
        host = urlsplit(service.url)
        probe = Probe(service.url)
        before = _probe_for(probe, args.baseline)
        slow: list[socket.socket] = []
        for _ in range(args.clients):
            s = socket.create_connection((host.hostname, host.port))
            s.sendall(
                b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: 200000\r\n\r\n"
            )
            slow.append(s)
        stop = threading.Event()

        def trickle() -> None:  # one byte a second on every slow connection
            while not stop.wait(1.0):
                for s in slow:
                    with suppress(OSError):
                        s.send(b" ")

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        during = _probe_for(probe, args.seconds)
        stop.set()
        thread.join()
        cut_off = 0
        for s in slow:
            s.settimeout(5)
            with suppress(OSError):
                cut_off += s.recv(64).startswith(b"HTTP/1.1 408")
            s.close()
    print(f"  {args.clients} slow clients (Content-Length 200000, 1 byte/s each) for {args.seconds:g} s")
    print(_summary("normal client alone", *before))
    print(_summary("normal client beside them", *during))
    print(f"  slow clients answered 408: {cut_off}/{args.clients}")
    share = sum(s == 200 for s in during[0]) / max(1, len(during[0]))
    ok = share == 1.0 and cut_off == args.clients
    print(
        f"hostile slow-bodies: {'PASS' if ok else 'FAIL'}  "
        "every normal request answered, every slow one cut off"
    )
    return ok


def amplify(args) -> bool:
    head, tail = b'{"captures": [{"station": "torino", "iq": [', b"[]]}]}"
    room = Settings().max_body_bytes - len(head) - len(tail)  # the largest body admission lets in
    body = head + b"[]," * (room // 3) + tail
    with ExitStack() as stack:
        service = Service(stack, 2, None)
        host = urlsplit(service.url)
        pids = service.workers()
        idle = {p: psutil.Process(p).memory_info().rss / 2**20 for p in pids}
        probe = Probe(service.url)
        before = _probe_for(probe, args.baseline)
        memory = Memory(pids, 0.1)
        stop = threading.Event()
        refusals: list[tuple[int, float]] = []

        def client() -> None:
            while not stop.is_set():
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
                start = time.perf_counter()
                try:
                    conn.request("POST", "/predict", body, {"content-type": "application/json"})
                    status = conn.getresponse().status
                except OSError:
                    status = 0
                finally:
                    conn.close()
                refusals.append((status, (time.perf_counter() - start) * 1e3))

        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
        for t in threads:
            t.start()
        during = _probe_for(probe, args.seconds)
        stop.set()
        for t in threads:
            t.join()
        memory.stop()
    peak = memory.peak()
    statuses = sorted({s for s, _ in refusals})
    ms = [m for _, m in refusals]
    print(
        f"  {args.clients} clients posting {len(body) / 2**20:.1f} MiB of empty `iq` lists "
        f"for {args.seconds:g} s"
    )
    print(
        f"  those requests: {len(refusals)}, statuses {statuses}, P50 {_p(ms, 50):.0f} ms (upload included)"
    )
    for pid in pids:
        print(
            f"  worker {pid}: RSS idle {idle[pid]:.0f} MiB, peak {peak[pid]:.0f} MiB "
            f"(+{peak[pid] - idle[pid]:.0f})"
        )
    print(_summary("normal client alone", *before))
    print(_summary("normal client beside them", *during))
    worst = max(peak[p] - idle[p] for p in pids)
    bound = args.clients * 10 * len(body) / 2**20  # body + simdjson's tape, per request in flight
    ok = statuses == [400] and worst < bound and all(s == 200 for s in during[0])
    print(
        f"hostile amplify: {'PASS' if ok else 'FAIL'}  all refused with 400, "
        f"worst growth {worst:.0f} MiB < {bound:.0f}"
    )
    return ok


def _bad_requests() -> list[tuple[str, bytes, str]]:
    good = request_body(example_captures())
    wrong = {**good, "captures": [{**good["captures"][0], "station": "atlantis"}, *good["captures"][1:]]}
    return [
        ("/predict", b"{not json", "application/json"),
        ("/predict", b'{"captures": "x"}', "application/json"),
        ("/predict", json.dumps(wrong).encode(), "application/json"),
        ("/predict", json.dumps({**good, "confidence_level": 2}).encode(), "application/json"),
        ("/predict", b"a=1", "application/x-www-form-urlencoded"),
        ("/predict", b"{}", "text/plain"),
        ("/predict/batch", b'{"items": [{"captures": 1}]}', "application/json"),
        ("/predict/batch", b'{"items": []}', "application/json"),
        ("/infer", b'{"items": []}', "application/json"),
        ("/infer", b'{"items": [{"captures": [{"station": "atlantis", "iq": "AAAA"}]}]}', "application/json"),
        ("/v1/predict/raw?stations=torino", b"\x00" * 7, "application/octet-stream"),
    ]


def fuzz_log(args) -> bool:
    bad = _bad_requests()
    with ExitStack() as stack:
        service = Service(stack, 2, None)
        host = urlsplit(service.url)
        start_lines = len(service.log.read_text().splitlines())
        statuses: dict[int, int] = {}
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        for i in range(args.requests):
            path, body, media_type = bad[i % len(bad)]
            conn.request("POST", path, body, {"content-type": media_type})
            response = conn.getresponse()
            response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if response.getheader("connection") == "close":
                conn.close()
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        conn.close()
        time.sleep(1)  # the workers' log lines reach the file
        lines = service.log.read_text().splitlines()[start_lines:]
    tracebacks = sum("Traceback" in line for line in lines)
    errors = sum("[ERROR]" in line for line in lines)
    print(f"  {args.requests} bad requests of {len(bad)} kinds: statuses {dict(sorted(statuses.items()))}")
    print(
        f"  log lines written: {len(lines)} ({sum(len(x) + 1 for x in lines)} bytes), "
        f"ERROR {errors}, tracebacks {tracebacks}"
    )
    ok = len(lines) <= args.requests and tracebacks == 0 and errors == 0 and max(statuses) < 500
    print(
        f"hostile fuzz-log: {'PASS' if ok else 'FAIL'}  "
        "at most one line per refusal, no ERROR, no traceback, no 5xx"
    )
    return ok


def oom(args) -> bool:
    """A pool of capture sets asked again and again: with Redis refusing writes, the hit rate holds."""
    pool = []
    for i in range(args.pool):  # distinct capture sets: the first receiver's first sample differs
        captures = example_captures()
        next(iter(captures.values()))[:2] = [i, -i]
        pool.append(request_body(captures))
    with ExitStack() as stack:
        store = Redis(stack)
        service = Service(stack, 2, store.url)
        host = urlsplit(service.url)
        probe = Probe(service.url)

        def hit_rate(seconds: float) -> tuple[float, int]:
            hits = total = 0
            conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for body in pool:
                    conn.request("POST", "/predict", json.dumps(body), {"content-type": "application/json"})
                    hits += json.loads(conn.getresponse().read())["cached"]
                    total += 1
                probe.once()  # and a fresh capture set: a miss whose write Redis refuses
            conn.close()
            return hits / total, total

        hit_rate(2)  # the pool's entries written while Redis still takes writes
        before = hit_rate(args.seconds)
        client = redis.Redis.from_url(store.url)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)
        during = hit_rate(args.seconds)
        client.close()
        log = service.log.read_text()
    refused = log.count("refuses writes")
    print(
        f"  hit rate on {args.pool} repeated capture sets: {100 * before[0]:.0f}% of {before[1]} before, "
        f"{100 * during[0]:.0f}% of {during[1]} with Redis refusing writes (OOM)"
    )
    print(
        f"  'refuses writes' log lines: {refused} (one per worker at most); 'serving uncached': "
        f"{log.count('serving uncached')}"
    )
    ok = during[0] >= before[0] - 0.02 and refused <= 2 and "serving uncached" not in log
    print(f"hostile oom: {'PASS' if ok else 'FAIL'}  the hit rate holds, the circuit stays closed")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="run", required=True)
    s = sub.add_parser("slow-bodies", help="clients sending a body a byte a second")
    s.add_argument("--clients", type=int, default=160)
    s.add_argument("--seconds", type=float, default=20)
    s.add_argument("--baseline", type=float, default=10, help="seconds of the normal client alone first")
    a = sub.add_parser("amplify", help="bodies of empty `iq` lists")
    a.add_argument("--clients", type=int, default=4)
    a.add_argument("--seconds", type=float, default=20)
    a.add_argument("--baseline", type=float, default=10)
    f = sub.add_parser("fuzz-log", help="bad requests of every kind; the log lines they write")
    f.add_argument("--requests", type=int, default=4400)
    o = sub.add_parser("oom", help="Redis at maxmemory refusing writes")
    o.add_argument("--pool", type=int, default=20)
    o.add_argument("--seconds", type=float, default=15)
    args = p.parse_args()
    REPORTS.mkdir(parents=True, exist_ok=True)
    run = {"slow-bodies": slow_bodies, "amplify": amplify, "fuzz-log": fuzz_log, "oom": oom}[args.run]
    return 0 if run(args) else 1


if __name__ == "__main__":
    sys.exit(main())
