"""Release: MLflow registry model -> versioned Bento -> container image, in one call.

`release("models:/NAME@ALIAS")` imports the model (heimdall.lifecycle.registry), builds a Bento
from bentofile.yaml and, when a container engine can run the image's base, runs
`bentoml containerize`. The base is BentoML's default (python:3.11-slim from Docker Hub) unless
`base_image` (or HEIMDALL_BASE_IMAGE) names another, such as the Debian base that
`make base-image` builds locally (deploy/podman/base-image.sh) where no registry is reachable.

The Python packages of the Bento are `[project].dependencies` of pyproject.toml, read at
build time and injected as `python.packages`: pyproject.toml stays the one list of pins
(BentoML's bentofile options cannot point at it, and a generated requirements file would
be a second copy to keep in step).

Bento version: ``v<registry version>-<contract fingerprint[:8]>-<digest[:10]>`` where the
digest (blake2b) covers the bundled source files (same include/exclude rules as the build),
bentofile.yaml and its image setup script, the pinned dependency list, the exact model tag
(whose version carries the ONNX sha256) and the base image. Same inputs give the same version,
and releasing them again returns the Bento already in the store instead of building a twin.
What the version cannot promise: byte-identical Bento archives (BentoML stamps a creation time
into bento.yaml) and identical images (base image tags and package indexes move); the version
identifies what was put in, not the bytes that come out.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound
from rich.markup import escape

from heimdall.lifecycle.progress import console, step
from heimdall.serving import bentoml_internals as internals

PROJECT_DIR = Path(__file__).resolve().parents[2]
BENTOFILE = "bentofile.yaml"
IMAGE_REPOSITORY = "heimdall"
ENGINES = ("docker", "podman")
BASE_IMAGE_ENV = "HEIMDALL_BASE_IMAGE"


class ReleaseError(Exception):
    """The project cannot be released as it stands (missing files, unpinned dependencies)."""


@dataclass(frozen=True)
class Release:
    """Outcome of a release: the Bento, the model it serves and the image (None without an engine)."""

    bento_tag: str
    model_tag: str
    labels: dict[str, str]
    reused: bool
    image: str | None
    engine: str | None
    base_image: str

    @property
    def containerize_command(self) -> str:
        """The command that turns this Bento into an image where a container engine runs."""
        version = self.bento_tag.partition(":")[2]
        return f"bentoml containerize {self.bento_tag} --image-tag {IMAGE_REPOSITORY}:{version}"


def pinned_dependencies(pyproject: Path) -> list[str]:
    """`[project].dependencies` of `pyproject`, refusing any that is not pinned with `==`."""
    try:
        deps = tomllib.loads(Path(pyproject).read_text())["project"]["dependencies"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise ReleaseError(f"{pyproject}: cannot read [project].dependencies ({exc})") from None
    loose = [d for d in deps if "==" not in d]
    if loose:
        raise ReleaseError(f"{pyproject}: dependencies must be pinned with ==, found {loose}")
    return list(deps)


def load_build_config(project_dir: Path) -> internals.BuildConfig:
    """bentofile.yaml of `project_dir`, parsed and validated by BentoML."""
    path = Path(project_dir) / BENTOFILE
    if not path.is_file():
        raise ReleaseError(f"{path}: not found (run from the project checkout or pass --project-dir)")
    return internals.load_build_config(str(path))


def bundled_files(project_dir: Path, config: internals.BuildConfig) -> list[str]:
    """Paths (relative, '/'-separated, sorted) the build copies into the Bento, by the same rules."""
    root = Path(project_dir).resolve()
    includes = internals.included_by(config, str(root))
    found = []
    for dirpath, _, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in files:
            rel = os.path.join(rel_dir, name).replace(os.sep, "/")
            if includes(rel):
                found.append(rel.removeprefix("./"))
    return sorted(found)


def content_digest(
    project_dir: Path,
    config: internals.BuildConfig,
    deps: list[str],
    model_tag: str,
    base_image: str | None = None,
) -> str:
    """blake2b hex digest of the bundled sources, bentofile.yaml and its setup script, the pins,
    the model tag and the base image (None: BentoML's default)."""
    root = Path(project_dir)
    h = hashlib.blake2b(digest_size=16)
    setup_script = [config.docker.setup_script] if config.docker.setup_script else []
    for rel in [*bundled_files(root, config), BENTOFILE, *setup_script]:
        h.update(rel.encode() + b"\0" + hashlib.sha256((root / rel).read_bytes()).digest())
    h.update("\n".join(deps).encode() + b"\0" + model_tag.encode() + b"\0" + (base_image or "").encode())
    return h.hexdigest()


def bento_version(labels: dict[str, str], digest: str) -> str:
    """v<registry version>-<contract fingerprint[:8]>-<digest[:10]>, a valid BentoML tag version."""
    return f"v{labels['registry_version']}-{labels['contract_fingerprint'][:8]}-{digest[:10]}"


def release_labels(model: bentoml.Model, digest: str) -> dict[str, str]:
    """Bento labels: where the model came from, the exact model tag and the content digest."""
    keys = ("registry_name", "registry_version", "registry_alias", "run_id", "contract_fingerprint")
    missing = [k for k in keys if k not in model.info.labels]
    if missing:
        raise ReleaseError(f"model {model.tag} lacks labels {missing}: import it with `heimdall import`")
    return {k: str(model.info.labels[k]) for k in keys} | {
        "model_tag": str(model.tag),
        "content_digest": digest,
    }


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def build_bento(
    model: bentoml.Model, project_dir: Path = PROJECT_DIR, base_image: str | None = None
) -> tuple[bentoml.Bento, bool]:
    """Build (or find) the Bento serving `model`, its image based on `base_image` (None: BentoML's
    default); return it and whether it already existed."""
    project_dir = Path(project_dir).resolve()
    config = load_build_config(project_dir)
    deps = pinned_dependencies(project_dir / "pyproject.toml")
    model_tag = str(model.tag)
    digest = content_digest(project_dir, config, deps, model_tag, base_image)
    labels = release_labels(model, digest)
    version = bento_version(labels, digest)
    tag = bentoml.Tag(config.name or "heimdall", version)
    try:
        return bentoml.bentos.get(tag), True
    except NotFound:
        pass
    # service.py reads HEIMDALL_MODEL_TAG when imported; reload it so the build references this model.
    with _env("HEIMDALL_MODEL_TAG", model_tag), step(f"Building Bento {tag}"):
        internals.build_and_save(
            config,
            version=version,
            build_ctx=str(project_dir),
            labels=labels,
            packages=deps,
            # The image resolves exactly this model, whatever else a store might hold.
            envs={"HEIMDALL_MODEL_TAG": model_tag},
            base_image=base_image,
        )
    return bentoml.bentos.get(tag), False


def image_base(bento_tag: str) -> str:
    """The image the Bento's generated Dockerfile starts FROM."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Dockerfile"
        bentoml.container.get_containerfile(bento_tag, output_path=str(path))
        lines = path.read_text().splitlines()
    return next(line.split()[1] for line in lines if line.upper().startswith("FROM "))


def container_engine(base_image: str) -> str | None:
    """'docker' or 'podman' if its CLI is installed and `<engine> run --rm <base_image> true` works.

    Running a container is the test, not `<engine> info`: an engine can answer `info` and still
    be unable to start one (no runtime, refused ulimits, an unreachable registry for the base).
    """
    for engine in ENGINES:
        if shutil.which(engine) is None:
            continue
        try:
            run = [engine, "run", "--rm", base_image, "true"]
            ok = subprocess.run(run, capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return engine
    return None


def containerize(bento_tag: str, engine: str) -> str:
    """Run `bentoml containerize` with `engine`, tag the image heimdall:latest too; return its
    versioned tag."""
    image = f"{IMAGE_REPOSITORY}:{bento_tag.partition(':')[2]}"
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "containerize",
        bento_tag,
        "--backend",
        engine,
        "--image-tag",
        image,
    ]
    console.print(f"[bold]$ {escape(' '.join(command[2:]))}[/]", highlight=False)
    if subprocess.run(command).returncode != 0:
        raise ReleaseError(f"bentoml containerize {bento_tag} with {engine} failed (output above)")
    # deploy/kubernetes runs heimdall:latest: the newest release.
    subprocess.run([engine, "tag", image, f"{IMAGE_REPOSITORY}:latest"], check=True)
    return image


def release(
    uri: str,
    tracking_uri: str | None = None,
    project_dir: Path = PROJECT_DIR,
    image: bool = True,
    base_image: str | None = None,
) -> Release:
    """Import `uri` from MLflow, build its Bento and, if `image` and an engine can run the base
    image, containerize it. `base_image` defaults to HEIMDALL_BASE_IMAGE, then BentoML's own."""
    from heimdall.lifecycle.registry import import_model

    base_image = base_image or os.environ.get(BASE_IMAGE_ENV) or None
    model = import_model(uri, tracking_uri=tracking_uri)
    bento, reused = build_bento(model, project_dir, base_image)
    if reused:
        console.print(f"[green]✓[/] Bento {bento.tag} already built from these inputs", highlight=False)
    base = image_base(str(bento.tag))
    engine = container_engine(base) if image else None
    built_image = containerize(str(bento.tag), engine) if engine else None
    labels = dict(bento.info.labels)
    return Release(str(bento.tag), str(model.tag), labels, reused, built_image, engine, base)
