"""Every use of BentoML's private API, in one module, checked against one BentoML version.

The service and the release code reach past BentoML's public API in a few places:

- the adaptive batcher of a batchable API, called in-process (`batch_caller`);
- the serde an @api input spec is read with (`is_json_serde`);
- the ASGI app a worker serves, wrapped in an outermost layer (`serve_behind`), and the
  HTTP protocol uvicorn serves it with (`bound_headers`, uvicorn's private API);
- the Bento build: bentofile parsing, its include/exclude rules and `Bento.create`
  with packages, labels, environment and a base image added, and without the distro's
  build tools on a base image of our own (`load_build_config`, `included_by`,
  `build_and_save`).

None of these is promised across releases, so importing this module refuses any BentoML
but `CHECKED_VERSION`. To upgrade: pin the new version in pyproject.toml, set
`CHECKED_VERSION` to it and run `make test`; the service, batching and release tests
exercise every function here through a real `bentoml serve` and a real build.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attr
import bentoml
import uvicorn
import uvicorn.config
from _bentoml_impl.serde import JSONSerde
from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal.bento import Bento
from bentoml._internal.bento.bento import BentoInfoV2
from bentoml._internal.bento.build_config import BentoBuildConfig, BentoEnvSchema, BentoPathSpec
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.container.frontend.dockerfile import CONTAINER_METADATA
from bentoml._internal.context import server_context

CHECKED_VERSION = "1.4.40"
CHECKED_UVICORN = "0.55.0"  # the version BentoML 1.4.40 resolves to; not pinned by us
BuildConfig = BentoBuildConfig

for _name, _found, _checked in (
    ("BentoML", bentoml.__version__, CHECKED_VERSION),
    ("uvicorn", uvicorn.__version__, CHECKED_UVICORN),
):
    if _found != _checked:
        raise RuntimeError(
            f"heimdall/serving/bentoml_internals.py was checked against {_name} {_checked}, "
            f"found {_found}: see its docstring for how to check an upgrade"
        )


def serve_behind(service: object, front: Callable[[Any], Any]) -> None:
    """Makes `front(app)` the outermost layer of the ASGI app BentoML builds for `service`.

    BentoML's `add_asgi_middleware` places a middleware inside its own (OpenTelemetry,
    metrics, access log, timeout, concurrency), which then run on requests it refuses.
    A worker serves what `ServiceAppFactory()` returns (through `Service.to_asgi`); the
    app the service calls itself through (its self proxy) is the one inside, unwrapped.
    """
    build = ServiceAppFactory.__call__
    if getattr(build, "fronted", None) is not None:
        build = build.fronted

    def call(factory: ServiceAppFactory) -> Any:
        app = build(factory)
        return front(app) if factory.service is service else app

    call.fronted = build  # type: ignore[attr-defined]
    ServiceAppFactory.__call__ = call


def bound_headers(protocol: type, max_bytes: int, on_reject: Callable[[str], None]) -> None:
    """Makes `protocol` (a `HeaderLimitedProtocol`) the HTTP protocol of the workers in this process.

    BentoML's worker builds `uvicorn.Config` with the default `http="auto"`, which uvicorn
    looks up in `uvicorn.config.HTTP_PROTOCOLS` when the server starts, after the service
    module (and so this call) has been imported.
    """
    protocol.max_bytes, protocol.on_reject = max_bytes, staticmethod(on_reject)  # type: ignore[attr-defined]
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{protocol.__module__}:{protocol.__qualname__}"


def batch_caller(service: object, api: str) -> Callable[[list[Any]], Awaitable[list[Any]]]:
    """`await call(rows)`: a list of rows through `api`'s adaptive batcher in this worker, its own
    outputs back.

    The batcher is the API's `CorkDispatcher` (its `max_batch_size` in rows, its
    `max_latency_ms` budget, 503 beyond it). Per batch this does what BentoML's
    `ServiceAppFactory.batch_infer` does: the batch's calls counted in the
    `adaptive_batch_size` histogram, their rows joined, the API's function run in the
    worker's thread limiter, its outputs split back. BentoML builds that per call, and a
    call then rebuilds the API's signature wrapper (`APIMethod.__get__`) and looks up the
    container of every queued value; here both are looked up once.
    `service` is the running service instance. Call this from a request, not from
    `__init__`: BentoML attaches the worker's app after the instance is built.
    """
    try:
        app = service.__self_proxy__._async.app  # type: ignore[attr-defined]
        route = next(r for r in app.routes if getattr(r, "name", None) == api)
        factory = route.endpoint.func.__self__  # functools.partial(factory.api_endpoint_wrapper, api)
        dispatcher = factory.dispatchers[api]
        func = getattr(service, api).local
    except (AttributeError, StopIteration, KeyError) as exc:
        raise RuntimeError(f"BentoML {bentoml.__version__}: no batcher for {api!r} where expected") from exc
    observe = (
        factory.adaptive_batch_size_hist.labels(
            runner_name=factory.service.name,
            worker_index=server_context.worker_index,
            method_name=api,
            service_version=server_context.bento_version,
            service_name=server_context.bento_name,
        ).observe
        if factory.enable_metrics
        else None
    )
    dispatcher.get_batch_size = len  # what BentoML's container lookup returns for a list

    async def run(calls: Sequence[list[Any]]) -> list[list[Any]]:
        if observe is not None:
            observe(len(calls))
        outputs = await factory._to_thread(func, [row for rows in calls for row in rows])
        ends = list(itertools.accumulate(len(rows) for rows in calls))
        return [outputs[end - len(rows) : end] for rows, end in zip(calls, ends, strict=True)]

    return dispatcher(run)


def is_json_serde(serde: object) -> bool:
    """Whether an input spec is being read from a JSON body (not multipart, not pickle)."""
    return isinstance(serde, JSONSerde)


def load_build_config(path: str) -> BuildConfig:
    """A bentofile.yaml, parsed and validated by BentoML."""
    return BentoBuildConfig.from_file(path)


def included_by(config: BuildConfig, root: str) -> Callable[[str], bool]:
    """Whether a path (relative to `root`, '/'-separated) goes into the Bento, by the build's own rules."""
    return BentoPathSpec(config.include or ["*"], config.exclude or [], root).includes


def build_and_save(
    config: BuildConfig,
    *,
    version: str,
    build_ctx: str,
    labels: dict[str, str],
    packages: list[str],
    envs: dict[str, str],
    base_image: str | None = None,
) -> None:
    """Build a Bento from `config` with labels, Python packages and environment added, its image
    based on `base_image` when given; store it."""
    docker = config.docker
    if base_image is not None:
        # With a base image BentoML ignores `distro` (and warns); python_version still picks the
        # interpreter its uv venv is made with.
        docker = attr.evolve(docker, base_image=base_image, distro=None)
    config = attr.evolve(
        config,
        docker=docker,
        labels={**config.labels, **labels},
        python=attr.evolve(config.python, packages=[*(config.python.packages or []), *packages]),
        envs=[*config.envs, *(BentoEnvSchema(name=k, value=v) for k, v in envs.items())],
    )
    bento = Bento.create(build_config=config, version=version, build_ctx=build_ctx, reload=True)
    if base_image is not None:
        _drop_distro_packages(bento)
    bento.save(BentoMLContainer.bento_store.get())


def _drop_distro_packages(bento: Bento) -> None:
    """Leave out the `apt-get install build-essential git ...` BentoML puts first in every image.

    Every pinned package installs from a binary wheel, so a compiler is only size (~250 MB);
    the local base image (deploy/podman/base-image.sh) already has what the service needs.
    """
    defaults = {spec["default_install_command"] for spec in CONTAINER_METADATA.values()}
    if not isinstance(bento.info, BentoInfoV2):  # only a @bentoml.service Bento has an image spec
        raise TypeError(f"expected a BentoML 1.4 service Bento, got {type(bento.info).__name__}")
    commands = bento.info.image.commands
    commands[:] = [c for c in commands if c not in defaults]
    bento.flush_info()
