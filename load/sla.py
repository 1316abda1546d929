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
import sys
from contextlib import ExitStack

from harness import REPORTS, Redis, Service, fresh_only, locust


def sla(url: str, args) -> int:
    extra = [
        "--rate-per-user",
        str(args.rate_per_user),
        "--repeat-share",
        str(args.repeat_share),
        "--pairs-share",
        str(args.pairs_share),
    ]
    result = locust(url, "sla", args.users, args.duration, args.warmup, extra)
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
            extra = fresh_only(rate / users, pairs_share)
            result = locust(url, f"saturate-{form}-{rate:g}", users, args.step_seconds, args.warmup, extra)
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
        url = args.url or Service(stack, args.workers, Redis(stack).url if args.redis else None).url
        return saturate(url, args) if args.saturate else sla(url, args)


if __name__ == "__main__":
    sys.exit(main())
