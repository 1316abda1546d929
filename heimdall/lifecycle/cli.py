"""`heimdall`: simulate, train, evaluate, register, alias, import and release models (thin calls).

Expected failures (a model this code cannot serve, a bad model URI, an
unreachable or empty registry) print one line to stderr and exit 1.
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

REFERENCE_MODEL = Path(str(files("heimdall") / "reference"))


def _given(**kwargs: Any) -> dict[str, Any]:
    """The options the user gave; the rest keep the called function's defaults."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _simulate(args: argparse.Namespace) -> None:
    from heimdall.training.simulate import simulate_scenes

    scenes = simulate_scenes(args.scenes, args.seed)
    scenes.save(args.out)
    print(f"{len(scenes)} scenes -> {args.out}")


def _train(args: argparse.Namespace) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("heimdall train needs PyTorch: pip install -e '.[train]'") from None
    from heimdall.training.train import train

    train(args.out, **_given(seed=args.seed, n_train=args.scenes, epochs=args.epochs))
    print(f"model and contract -> {args.out}")


def _evaluate(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from heimdall.training.conditions import CONDITIONS, evaluate_conditions, plot_reliability
    from heimdall.training.evaluate import evaluate

    result = evaluate(args.model, **_given(n_scenes=args.scenes, seed=args.seed, plot_path=args.plot))
    table = Table("figure", "value", title=f"{args.model}, nominal held-out scenes")
    for key, value in result.model_dump(exclude={"conditions"}).items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
    with Progress() as bar:
        task = bar.add_task("conditions", total=len(CONDITIONS))
        grid = evaluate_conditions(
            args.model,
            **_given(n_scenes=args.scenes),
            advance=lambda name: bar.update(task, advance=1, description=f"done: {name}"),
        )
    if args.reliability_plot:
        plot_reliability(args.reliability_plot, grid)
    table = Table(
        "condition",
        "model median / p95 km",
        "baseline median / p95 km",
        "oracle median / p95 km",
        "model / oracle median",
        "inside 50% / 95%",
        "world-prior oracle median km",
        "inside its 50% / 95%",
        title=f"{args.model}, {grid[0].accuracy.scenes} held-out scenes per condition",
    )
    for r in grid:
        a = r.accuracy
        table.add_row(
            a.condition,
            f"{a.median_error_km:.1f} / {a.p95_error_km:.1f}",
            f"{a.baseline_median_error_km:.1f} / {a.baseline_p95_error_km:.1f}",
            f"{a.oracle_median_error_km:.1f} / {a.oracle_p95_error_km:.1f}",
            f"{a.median_error_km / a.oracle_median_error_km:.3f}",
            f"{a.coverage_50:.3f} / {a.coverage_95:.3f}",
            f"{a.world_oracle_median_error_km:.1f}",
            f"{a.world_oracle_coverage_50:.3f} / {a.world_oracle_coverage_95:.3f}",
        )
    Console().print(table)


def _register(args: argparse.Namespace) -> None:
    from heimdall.lifecycle.registry import register

    reg = register(args.model, **_given(name=args.name, alias=args.alias))
    state = "already registered as" if reg.reused else "registered as"
    print(f"{args.model} {state} models:/{reg.name}/{reg.version} (run {reg.run_id})")
    print(f"models:/{reg.name}@{reg.alias} -> version {reg.version}")


def _import(args: argparse.Namespace) -> None:
    from heimdall.lifecycle.registry import import_model

    stored = import_model(args.uri)
    labels = " ".join(f"{k}={v}" for k, v in stored.info.labels.items())
    print(f"{stored.tag} ({labels})")


def _alias(args: argparse.Namespace) -> None:
    from heimdall.lifecycle.registry import set_alias

    before = set_alias(args.name, args.alias, args.version)
    was = f" (was {before})" if before else ""
    print(f"models:/{args.name}@{args.alias} -> version {args.version}{was}")


def _release(args: argparse.Namespace) -> None:
    from heimdall.lifecycle.release import release

    done = release(
        args.uri, **_given(project_dir=args.project_dir, base_image=args.base_image), image=not args.no_image
    )
    print(f"bento  {done.bento_tag}")
    origin = " ".join(f"{k}={v}" for k, v in done.labels.items() if k.startswith("registry"))
    print(f"model  {done.model_tag} ({origin})")
    if done.image:
        print(f"image  {done.image} (built with {done.engine})")
    elif args.no_image:
        print(f"image  skipped (--no-image); to build it: {done.containerize_command}")
    else:
        print(f"image  not built: no container engine here can run its base ({done.base_image}):")
        print(f"       `docker run --rm {done.base_image} true` / `podman run ...` failed.")
        print(f"       Where one runs: {done.containerize_command}")
        print(f"       (copy it there: bentoml export {done.bento_tag} heimdall.bento; bentoml import)")


def _example(args: argparse.Namespace) -> None:
    import json

    from heimdall.training.examples import example_captures, octet_body, request_body

    if args.form == "octets":
        body, stations = octet_body(example_captures())
        sys.stdout.buffer.write(body)
        print(f"stations={stations}", file=sys.stderr)
    else:
        print(json.dumps(request_body(example_captures(), args.form)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heimdall", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("simulate", help="simulate WebSDR capture sets and their true positions")
    p.add_argument("--scenes", type=int, required=True, help="number of scenes")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="output .npz file")
    p.set_defaults(run=_simulate)

    p = commands.add_parser(
        "train", help="train a model on simulated scenes; writes model.onnx and contract.json"
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--scenes", type=int, help="training scenes")
    p.add_argument("--epochs", type=int)
    p.set_defaults(run=_train)

    p = commands.add_parser(
        "evaluate", help="measure a model on fresh simulated scenes, nominal and over a grid of conditions"
    )
    p.add_argument("--model", type=Path, required=True, help="directory with model.onnx and contract.json")
    p.add_argument("--scenes", type=int, help="held-out scenes, nominal and per condition (default 2000)")
    p.add_argument("--seed", type=int, help="seed of the nominal scenes")
    p.add_argument("--plot", type=Path, help="write a PNG of errors and ellipses here")
    p.add_argument(
        "--reliability-plot", type=Path, help="write a PNG of ellipse coverage against level, per condition"
    )
    p.set_defaults(run=_evaluate)

    p = commands.add_parser("register", help="log a model and its contract to MLflow and set an alias")
    p.add_argument(
        "--model", type=Path, default=REFERENCE_MODEL, help="model directory (default: %(default)s)"
    )
    p.add_argument("--name", help="registered model name (default: heimdall-localizer)")
    p.add_argument("--alias", help="alias to point at the version (default: production)")
    p.set_defaults(run=_register)

    p = commands.add_parser("import", help="import a registry model into the BentoML model store")
    p.add_argument("uri", metavar="URI", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.set_defaults(run=_import)

    p = commands.add_parser(
        "alias", help="point a registry alias at a version: promote, start a canary, roll back"
    )
    p.add_argument("name", metavar="NAME", help="registered model name, e.g. heimdall-localizer")
    p.add_argument("alias", metavar="ALIAS", help="e.g. production or candidate")
    p.add_argument("version", metavar="VERSION", help="registry version number")
    p.set_defaults(run=_alias)

    p = commands.add_parser(
        "release", help="import a registry model, build its versioned Bento and containerize it"
    )
    p.add_argument("uri", metavar="URI", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--project-dir", type=Path, help="checkout with bentofile.yaml (default: this one)")
    p.add_argument("--no-image", action="store_true", help="stop after building the Bento")
    p.add_argument(
        "--base-image",
        help="image to build on, e.g. localhost/heimdall-base:bookworm from `make base-image` "
        "(default: $HEIMDALL_BASE_IMAGE, else BentoML's python:3.11-slim)",
    )
    p.set_defaults(run=_release)

    p = commands.add_parser("example", help="print the example capture set as a POST /predict body")
    p.add_argument(
        "--form",
        choices=["int16", "pairs", "octets"],
        default="int16",
        help="base64 int16 (default), JSON [[I, Q], ...] pairs, or raw octets for /v1/predict/raw",
    )
    p.set_defaults(run=_example)
    return parser


def _expected(exc: Exception) -> bool:
    """Failures a user can act on from a one-line message, as opposed to bugs (which keep their traceback)."""
    from heimdall.contract.servable import ModelNotServable

    registry = sys.modules.get(
        "heimdall.lifecycle.registry"
    )  # imported only by the commands that need MLflow
    release = sys.modules.get("heimdall.lifecycle.release")
    return (
        isinstance(exc, ModelNotServable | OSError)
        or (registry is not None and isinstance(exc, registry.RegistryError))
        or (release is not None and isinstance(exc, release.ReleaseError))
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `heimdall` console script. MLflow is found through MLFLOW_TRACKING_URI."""
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except Exception as exc:
        if not _expected(exc):
            raise
        print(f"heimdall {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
