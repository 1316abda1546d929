"""Each worker follows the registry: where HEIMDALL_MODEL_URI (and HEIMDALL_CANDIDATE_URI) point.

Every `registry_poll_s`, or at once after POST /v1/admin/reload, a worker resolves the
aliases. A version it does not hold yet is imported (`heimdall.serving.registry`: the
contract and servability checks), opened and warmed up in a thread, and only then
swapped in: the pipeline's roster is replaced whole, so requests in flight finish on the
versions they started with. A version that fails any of that is refused with one log
line and a metric, and not tried again until its alias moves; the current one keeps
serving. Registry unreachable: keep serving, say so once, retry at the next poll.

POST /v1/admin/reload reaches one worker; it checks at once and touches a file named
after the service's process (the workers' parent), which the other workers look at
every `_SIGNAL_TICK_S`, so all of them check within that.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import bentoml

from heimdall.contract.servable import ModelNotServable
from heimdall.serving.metrics import Metrics
from heimdall.serving.pipeline import Pipeline
from heimdall.serving.settings import Settings
from heimdall.serving.versions import LoadedModel, Role, Roster

if TYPE_CHECKING:
    from heimdall.serving.registry import RegistryError, RegistryRef

log = logging.getLogger(__name__)
_SIGNAL_TICK_S = 0.5
Open = Callable[[bentoml.Model], LoadedModel]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def reload_signal() -> Path:
    """The file the workers of this service watch for reload requests."""
    return Path(tempfile.gettempdir()) / f"heimdall-reload-{os.getppid()}"


@dataclass
class _Outcome:
    """What one check decided for a role: keep what it has, take `model`, or drop the candidate."""

    model: LoadedModel | None
    changed: bool
    took: str = ""  # how long the import and the opening took, for the swap's log line


class Follower:
    """Keeps `pipeline.roster` on the versions the registry aliases name."""

    def __init__(
        self, settings: Settings, metrics: Metrics, pipeline: Pipeline, open_model: Open, grace_s: float
    ) -> None:
        self.settings, self.metrics, self.pipeline = settings, metrics, pipeline
        self._open = open_model
        self._grace_s = grace_s  # retired versions' caches close once requests that read them are done
        self._refs: dict[Role, RegistryRef] = {}
        self._registry: ModuleType | None = None
        if settings.model_uri or settings.candidate_uri:
            # MLflow's client takes seconds to import: only workers that follow a registry pay for it
            from heimdall.serving import registry

            self._registry = registry
            uris: dict[Role, str | None] = {
                "primary": settings.model_uri,
                "candidate": settings.candidate_uri,
            }
            for role, uri in uris.items():
                if uri:
                    self._refs[role] = registry.RegistryRef.parse(uri)
        self._refused: dict[Role, str] = {}  # registry version refused, per role, until the alias moves
        self._reachable = True
        self._lock = asyncio.Lock()
        self._signal = reload_signal()
        self._signal_seen = self._signal_mtime()
        self._closing: set[asyncio.Task] = set()
        self.state: dict[str, Any] = {
            "model_uri": settings.model_uri,
            "candidate_uri": settings.candidate_uri,
            "poll_s": settings.registry_poll_s,
            "reachable": None,
            "last_check": None,
            "last_refusal": None,
        }
        pipeline.registry_state = self.state

    @property
    def following(self) -> bool:
        return bool(self._refs)

    def check_blocking(self) -> None:
        """The start-up check, before the worker takes requests (no event loop yet)."""
        self._apply(self._prepare())

    async def check(self) -> dict[str, Any]:
        """Resolve the aliases now and swap in what changed; return the registry state."""
        async with self._lock:
            outcomes = await asyncio.to_thread(self._prepare)
            self._apply(outcomes)
        return self.state

    async def run(self) -> None:
        """Check every `registry_poll_s`, and as soon as another worker was asked to reload."""
        while True:
            deadline = time.monotonic() + self.settings.registry_poll_s
            while time.monotonic() < deadline and not self._signalled():
                await asyncio.sleep(min(_SIGNAL_TICK_S, max(deadline - time.monotonic(), 0)))
            try:
                await self.check()
            except Exception:  # a follower bug must never take the worker's answers with it
                log.exception(
                    "registry: check failed; still serving %s", self.pipeline.roster.primary.served.version
                )

    def signal_all(self) -> None:
        """Ask every worker of this service to check now (this one records it as seen)."""
        self._signal.write_text(_now())
        self._signal_seen = self._signal_mtime()

    def _signal_mtime(self) -> float | None:
        try:
            return self._signal.stat().st_mtime
        except FileNotFoundError:
            return None

    def _signalled(self) -> bool:
        seen = self._signal_mtime()
        if seen != self._signal_seen:
            self._signal_seen = seen
            return True
        return False

    def _current(self, role: Role) -> LoadedModel | None:
        roster = self.pipeline.roster
        return roster.primary if role == "primary" else roster.candidate

    def _prepare(self) -> dict[Role, _Outcome]:
        """Runs in a thread: resolve, then import, open and warm up what is new."""
        outcomes: dict[Role, _Outcome] = {}
        roster, registry = self.pipeline.roster, self._registry
        if registry is None:  # not following
            return outcomes
        for role, ref in self._refs.items():
            current = self._current(role)
            try:
                version = registry.resolve(ref)
            except registry.NotInRegistry as exc:
                self._reached()
                if role == "candidate":
                    if current is not None:  # the alias was removed: the canary is over
                        outcomes[role] = _Outcome(None, changed=True)
                elif self._refused.get(role) != "":  # say so once, keep serving
                    self._refused[role] = ""
                    self._refuse(role, ref, "", str(exc))
                continue
            except registry.RegistryError as exc:
                self._unreachable(exc)
                return outcomes
            self._reached()
            if role == "candidate" and _is(roster.primary, ref, version):
                if current is not None:  # the primary caught up (full rollout): one version is enough
                    outcomes[role] = _Outcome(None, changed=True)
                continue
            if (current is not None and _is(current, ref, version)) or self._refused.get(role) == version:
                continue
            held = next((m for m in roster.models() if _is(m, ref, version)), None)
            if held is not None:  # e.g. the candidate promoted: the same loaded version, a new role
                outcomes[role] = _Outcome(held, changed=True)
                continue
            try:
                start = time.perf_counter()
                stored = registry.import_model(str(ref), version=version)
                imported = time.perf_counter()
                model = self._open(stored)
                took = f"import {imported - start:.2f} s, open {time.perf_counter() - imported:.2f} s"
            except registry.RegistryError as exc:  # went away mid-download: try again at the next check
                self._unreachable(exc)
                return outcomes
            except Exception as exc:
                self._refused[role] = version
                self._refuse(role, ref, version, f"{type(exc).__name__}: {exc}")
                continue
            outcomes[role] = _Outcome(model, changed=True, took=took)
        return outcomes

    def _apply(self, outcomes: dict[Role, _Outcome]) -> None:
        """On the event loop (or before it runs): swap the roster if anything changed."""
        self.state["last_check"] = _now()
        if not any(o.changed for o in outcomes.values()):
            return
        old = self.pipeline.roster
        chosen = outcomes.get("primary")
        primary = chosen.model if chosen and chosen.model else old.primary
        candidate = outcomes["candidate"].model if "candidate" in outcomes else old.candidate
        if candidate is primary:
            candidate = None
        mode, share = self.settings.candidate_mode, self.settings.candidate_share
        try:
            roster = Roster(primary, candidate, mode, share)
        except ModelNotServable as exc:
            version = candidate.served.registry_version or "" if candidate else ""
            self._refused["candidate"] = version
            self._refuse("candidate", self._refs["candidate"], version, str(exc))
            roster = Roster(primary, None, mode, share)
        for role in ("primary", "candidate"):
            new, before = getattr(roster, role), getattr(old, role)
            if new is not None and new is not before:
                self.metrics.model_swaps.labels(role).inc()
                was = before.served.version if before else "none"
                took = f"; {outcomes[role].took}" if role in outcomes and outcomes[role].took else ""
                log.warning("registry: %s is now %s (was %s)%s", role, new.served.version, was, took)
            elif new is None and before is not None:
                log.warning("registry: candidate %s retired", before.served.version)
        for model in self.pipeline.swap(roster):
            self._retire(model)

    def _retire(self, model: LoadedModel) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # start-up: nothing has used its cache yet

        async def close() -> None:
            await asyncio.sleep(self._grace_s)
            await model.cache.close()

        task = loop.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _refuse(self, role: Role, ref: RegistryRef, version: str, reason: str) -> None:
        self.metrics.model_refusals.labels(role).inc()
        current = self._current(role)
        keeps = current.served.version if current else "no candidate"
        where = f"{ref} (version {version})" if version else str(ref)
        log.error("registry: refused %s %s: %s; still serving %s", role, where, reason, keeps)
        self.state["last_refusal"] = {
            "role": role,
            "uri": str(ref),
            "registry_version": version or None,
            "reason": reason,
            "at": _now(),
        }

    def _unreachable(self, exc: RegistryError) -> None:
        self.metrics.registry_errors.inc()
        self.state["reachable"] = False
        if self._reachable:  # once per outage
            self._reachable = False
            log.warning(
                "registry: %s; still serving %s, retrying every %gs",
                exc,
                self.pipeline.roster.primary.served.version,
                self.settings.registry_poll_s,
            )

    def _reached(self) -> None:
        self.state["reachable"] = True
        if not self._reachable:
            self._reachable = True
            log.warning("registry: reachable again")


def _is(model: LoadedModel, ref: RegistryRef, version: str) -> bool:
    """Whether `model` is version `version` of the registered model `ref` names."""
    labels = model.served.labels
    return labels.get("registry_name") == ref.name and labels.get("registry_version") == version
