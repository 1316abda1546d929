"""Locust load test of Heimdall: simulated capture sets, single and batch, both payload forms.

Each simulated user sends about `--rate-per-user` requests/s (constant throughput) to
POST /predict (and POST /predict/batch, by `--single-weight`/`--batch-weight`). A share
`--repeat-share` of the capture sets are ones the service has already answered, the rest
are fresh; `--pairs-share` of the bodies use JSON [[I, Q], ...] lists, the rest base64
int16. Requests are named by outcome, e.g. `/predict int16 hit` and `/predict pairs miss`
(from the response's `cached` field), so the reports give hit and miss latency apart.

Statistics are reset after `--warmup` seconds. When the run ends, the SLA is checked and
Locust's exit code set (0 pass, 1 fail): P95 < `--sla-p95-ms`, no failures, and a measured
hit rate within `--hit-tolerance` of `--repeat-share`. `--summary-json` writes the figures.

    locust -f load/locustfile.py --headless -u 100 -r 50 -t 70s --host http://127.0.0.1:3000
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import gevent
from locust import FastHttpUser, events, task
from locust.stats import StatsEntry

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from payloads import CaptureSets, Form  # noqa: E402

JSON = {"content-type": "application/json"}
POOL: CaptureSets | None = None
ARGS = None  # the parsed options, once Locust has them
COUNTS = {"predictions": 0, "cached": 0, "repeats_missed": 0, "fresh_hit": 0}
TIMELINE: list[tuple[float, float, str, int]] = []


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("heimdall")
    group.add_argument("--scenes", type=int, default=200, help="simulated scenes to replay")
    group.add_argument("--seed", type=int, default=20261126, help="simulator seed")
    group.add_argument("--repeat-share", type=float, default=0.8, help="share of repeated capture sets")
    group.add_argument("--pairs-share", type=float, default=0.2, help="share of JSON pair-list bodies")
    group.add_argument("--single-weight", type=int, default=9, help="task weight of POST /predict")
    group.add_argument("--batch-weight", type=int, default=1, help="task weight of POST /predict/batch")
    group.add_argument("--batch-items", type=int, default=4, help="capture sets per batch request")
    group.add_argument("--rate-per-user", type=float, default=1.0, help="requests/s per simulated user")
    group.add_argument("--warmup", type=float, default=10.0, help="seconds before statistics are reset")
    group.add_argument("--sla-p95-ms", type=float, default=500.0, help="SLA: P95 bound, ms")
    group.add_argument("--hit-tolerance", type=float, default=0.03, help="SLA: |hit rate - share| bound")
    group.add_argument("--summary-json", default="", help="write the figures and verdict here")
    group.add_argument("--timeline", default="", help="write every request (time, ms, name, status) here")


@events.init.add_listener
def _prepare(environment, **_kwargs) -> None:
    global POOL, ARGS
    opts = ARGS = environment.parsed_options
    if opts is None:
        return
    forms: tuple[Form, ...] = tuple(
        f for f, share in (("int16", 1 - opts.pairs_share), ("pairs", opts.pairs_share)) if share > 0
    )
    start = time.perf_counter()
    POOL = CaptureSets(opts.scenes, opts.seed, forms)
    print(
        f"heimdall: {opts.scenes} scenes encoded as {forms} in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    weighted = [HeimdallUser.predict] * opts.single_weight + [HeimdallUser.batch] * opts.batch_weight
    HeimdallUser.tasks = weighted


@events.test_start.add_listener
def _schedule_reset(environment, **_kwargs) -> None:
    def reset() -> None:
        environment.runner.stats.reset_all()
        COUNTS.update(dict.fromkeys(COUNTS, 0))
        print("heimdall: warm-up over, statistics reset", file=sys.stderr)

    gevent.spawn_later(environment.parsed_options.warmup, reset)


class HeimdallUser(FastHttpUser):
    """A map front end posting capture sets at about `--rate-per-user` requests/s."""

    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        # Each user keeps its own random phase: request k is due at phase + k / rate,
        # whenever the previous one finished. Locust's constant_throughput counts from the
        # last request's end instead, so a slow start (every capture new, the batcher warming
        # up) left all users firing within the same 200 ms of every second, measuring
        # the queue of their own burst rather than the service.
        self._due = time.monotonic() + POOL.rng.random() / self.environment.parsed_options.rate_per_user
        gevent.sleep(self._due - time.monotonic())

    def wait_time(self) -> float:
        self._due += 1 / self.environment.parsed_options.rate_per_user
        return max(0.0, self._due - time.monotonic())

    def _form(self) -> Form:
        return "pairs" if POOL.rng.random() < self.environment.parsed_options.pairs_share else "int16"

    def _count(self, key, repeated: bool, prediction: dict) -> bool:
        cached = bool(prediction["cached"])
        COUNTS["predictions"] += 1
        COUNTS["cached"] += cached
        COUNTS["repeats_missed"] += repeated and not cached
        COUNTS["fresh_hit"] += cached and not repeated
        if not repeated:
            POOL.answered.append(key)
        return cached

    @task
    def predict(self) -> None:
        key, repeated = POOL.pick(self.environment.parsed_options.repeat_share)
        form = self._form()
        with self.client.post(
            "/predict", data=POOL.body(key, form), headers=JSON, name=f"/predict {form}", catch_response=True
        ) as r:
            try:
                cached = self._count(key, repeated, r.json())
            except (ValueError, KeyError, TypeError):
                r.request_meta["name"] = f"/predict {form} failed"
                r.failure(f"HTTP {r.status_code}: {r.text[:200] if r.text else ''}")
                return
            r.request_meta["name"] = f"/predict {form} {'hit' if cached else 'miss'}"

    @task
    def batch(self) -> None:
        opts = self.environment.parsed_options
        form = self._form()
        picks = [POOL.pick(opts.repeat_share) for _ in range(opts.batch_items)]
        body = b'{"items": [' + b", ".join(POOL.body(k, form) for k, _ in picks) + b"]}"
        with self.client.post(
            "/predict/batch", data=body, headers=JSON, name=f"/predict/batch {form}", catch_response=True
        ) as r:
            try:
                items = r.json()["items"]
                for (key, repeated), item in zip(picks, items, strict=True):
                    self._count(key, repeated, item["prediction"])
            except (ValueError, KeyError, TypeError):
                r.failure(f"HTTP {r.status_code}: {r.text[:200] if r.text else ''}")


def _merged(stats, word: str) -> StatsEntry:
    merged = StatsEntry(stats, word, "")
    for entry in stats.entries.values():
        if entry.name.endswith(f" {word}"):
            merged.extend(entry)
    return merged


def _figures(entry: StatsEntry) -> dict:
    return {
        "requests": entry.num_requests,
        "rps": round(entry.total_rps, 1),
        **{f"p{q}_ms": entry.get_response_time_percentile(q / 100) for q in (50, 95, 99)},
    }


def summary(environment) -> dict:
    """The figures after warm-up and the SLA verdict."""
    opts, stats = environment.parsed_options, environment.runner.stats
    total = stats.total
    hit_rate = COUNTS["cached"] / COUNTS["predictions"] if COUNTS["predictions"] else 0.0
    checks = {
        f"p95 < {opts.sla_p95_ms:g} ms": total.num_requests > 0
        and total.get_response_time_percentile(0.95) < opts.sla_p95_ms,
        "no failures": total.num_failures == 0,
        f"hit rate within {opts.hit_tolerance:g} of {opts.repeat_share:g}": abs(hit_rate - opts.repeat_share)
        <= opts.hit_tolerance,
    }
    return {
        "all": _figures(total) | {"failures": total.num_failures},
        "hits": _figures(_merged(stats, "hit")),
        "misses": _figures(_merged(stats, "miss")),
        "by_name": {e.name: _figures(e) | {"failures": e.num_failures} for e in stats.entries.values()},
        "hit_rate": round(hit_rate, 4),
        **COUNTS,
        "users": environment.runner.user_count,
        "load_generator_cpu_warning": environment.runner.cpu_warning_emitted,
        "checks": checks,
        "pass": all(checks.values()),
    }


@events.request.add_listener
def _record(name, response_time, response, **_kwargs) -> None:
    if ARGS is not None and ARGS.timeline:
        TIMELINE.append((time.time(), response_time, name, getattr(response, "status_code", 0) or 0))


@events.quitting.add_listener
def _gate(environment, **_kwargs) -> None:
    if environment.parsed_options.timeline:
        with open(environment.parsed_options.timeline, "w") as out:
            out.write("time,ms,name,status\n")
            out.writelines(f"{t:.3f},{ms:.1f},{name},{status}\n" for t, ms, name, status in TIMELINE)
    result = summary(environment)
    environment.process_exit_code = 0 if result["pass"] else 1
    if environment.parsed_options.summary_json:
        Path(environment.parsed_options.summary_json).write_text(json.dumps(result, indent=2))
    a, h, m = result["all"], result["hits"], result["misses"]
    checks = "  ".join(f"[{'x' if ok else ' '}] {name}" for name, ok in result["checks"].items())
    print(f"heimdall SLA: {'PASS' if result['pass'] else 'FAIL'}  {checks}", file=sys.stderr)
    print(
        f"  {a['rps']} req/s, {a['requests']} requests, {a['failures']} failures, "
        f"hit rate {result['hit_rate']:.3f}"
        f"  | all p50/p95/p99 {a['p50_ms']:.0f}/{a['p95_ms']:.0f}/{a['p99_ms']:.0f} ms"
        f"  | hits {h['p50_ms']:.0f}/{h['p95_ms']:.0f}/{h['p99_ms']:.0f}"
        f"  | misses {m['p50_ms']:.0f}/{m['p95_ms']:.0f}/{m['p99_ms']:.0f}",
        file=sys.stderr,
    )
