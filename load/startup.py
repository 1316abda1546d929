"""Container start-up time and image size of a release image.

Prints, for each run: seconds from `<engine> run` to the first 200 from /readyz (the model
loaded and its warm-up inference valid in every worker), then the median, and the image's
size as the engine reports it. Each container is removed by id afterwards.

Usage: python load/startup.py [--image heimdall:VERSION] [--runs 3] [--workers N] [--engine podman]
Default image: the newest localhost/heimdall:* (`make release` builds one), with its own
HEIMDALL_WORKERS (2) unless --workers is given (deploy/kubernetes runs 1 per pod).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import time
import urllib.request


def newest_image(engine: str) -> str:
    out = subprocess.run(
        [engine, "images", "--format", "json", "localhost/heimdall"], check=True, capture_output=True
    ).stdout
    images = [i for i in json.loads(out or b"[]") if i.get("Names")]
    if not images:
        raise SystemExit("no localhost/heimdall image: build one with `make release`")
    return max(images, key=lambda i: i["Created"])["Names"][0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def time_to_ready(engine: str, image: str, timeout: float, env: list[str]) -> float:
    port = free_port()
    start = time.monotonic()
    container = subprocess.run(
        [engine, "run", "--detach", "--publish", f"127.0.0.1:{port}:3000", *env, image],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        while time.monotonic() - start < timeout:
            if ready(f"http://127.0.0.1:{port}/readyz"):
                return time.monotonic() - start
            time.sleep(0.05)
        raise SystemExit(f"{image} not ready after {timeout:.0f} s")
    finally:
        subprocess.run([engine, "rm", "--force", container], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="podman")
    parser.add_argument("--image", help="default: the newest localhost/heimdall:*")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for /readyz")
    parser.add_argument("--workers", type=int, help="HEIMDALL_WORKERS (default: the image's)")
    args = parser.parse_args()
    image = args.image or newest_image(args.engine)
    size = subprocess.run(
        [args.engine, "image", "inspect", "--format", "{{.Size}}", image],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"image {image}: {int(size):,} bytes = {int(size) / 1e9:.4f} GB", flush=True)
    env = ["--env", f"HEIMDALL_WORKERS={args.workers}"] if args.workers else []
    workers = f"{args.workers} worker(s)" if args.workers else "the image's workers"
    times = []
    for run in range(1, args.runs + 1):
        times.append(time_to_ready(args.engine, image, args.timeout, env))
        print(
            f"run {run}/{args.runs} ({workers}): `{args.engine} run` to ready {times[-1]:.1f} s", flush=True
        )
    print(f"median `{args.engine} run` to ready: {statistics.median(times):.1f} s over {len(times)} runs")


if __name__ == "__main__":
    main()
