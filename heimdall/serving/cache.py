"""The prediction cache: a decorator in front of preprocessing + inference.

Keys are `heimdall:{namespace}:{digest}`, where the namespace carries the model
name, version and contract fingerprint (a new model never reads an old answer)
and the digest is the BLAKE3 of the canonical IQ (`heimdall.decode`), so a hit
skips preprocessing as well as inference.

With a Redis URL the request path makes one round trip, a GET; the SET after a
miss runs in the background. Redis down or slow never fails or stalls a
request: after a fault the cache is skipped (a circuit) for `cache_retry_s`,
then one request probes it again. Without a URL a bounded in-process LRU does
the same job, so a fresh machine needs nothing else.

Values are 44 bytes (`<4s5d`: magic + the five model outputs) and validated on
read: a cache is shared state a client cannot write, but an operator, another
version or a bit flip can, and a bad value must never become an answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from heimdall.serving.decode import CaptureSet
from heimdall.serving.inference import ModelOutput
from heimdall.serving.metrics import Metrics
from heimdall.serving.settings import Settings

log = logging.getLogger(__name__)

_VALUE = struct.Struct("<4s5d")
_MAGIC = b"HMO1"  # Heimdall ModelOutput, layout 1
# Background writes beyond this are dropped: a lost write costs one future miss,
# a queue behind a slow Redis would cost memory without bound.
MAX_PENDING_WRITES = 64
_Predict = Callable[[CaptureSet], Awaitable[ModelOutput]]


def encode_value(value: ModelOutput) -> bytes | None:
    """The stored form of a model output; None if it would not pass `decode_value` (never cached)."""
    try:
        raw = _VALUE.pack(_MAGIC, *value)
    except (struct.error, TypeError):
        return None
    return raw if decode_value(raw) is not None else None


def decode_value(raw: object) -> ModelOutput | None:
    """A stored value back to a ModelOutput, or None for anything malformed or implausible."""
    if not isinstance(raw, bytes) or len(raw) != _VALUE.size:
        return None
    magic, *fields = _VALUE.unpack(raw)
    out = ModelOutput(*fields)
    valid = (
        magic == _MAGIC
        and all(map(math.isfinite, out))
        and out.sigma_east_m > 0
        and out.sigma_north_m > 0
        and -1 < out.rho < 1
    )
    return out if valid else None


@dataclass(frozen=True)
class Cached:
    value: ModelOutput
    hit: bool


class _LocalLRU:
    """In-process cache: at most `entries` values, each kept `ttl_s` seconds; least recently used go first."""

    def __init__(self, entries: int, ttl_s: float) -> None:
        self.entries, self.ttl_s = entries, ttl_s
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[1]

    def set(self, key: str, raw: bytes) -> None:
        if self.entries == 0:
            return
        self._data[key] = (time.monotonic() + self.ttl_s, raw)
        self._data.move_to_end(key)
        while len(self._data) > self.entries:
            self._data.popitem(last=False)

    def delete(self, key: str) -> None:
        self._data.pop(key, None)


class PredictionCache:
    """Cache + single-flight in front of an async `CaptureSet -> ModelOutput` function. See `memoize`."""

    def __init__(self, settings: Settings, namespace: str, metrics: Metrics) -> None:
        self._prefix = f"heimdall:{namespace}:"
        self._ttl_s = settings.cache_ttl_s
        self._timeout_s = settings.cache_timeout_ms / 1000
        self._retry_s = settings.cache_retry_s
        self._metrics = metrics
        self._counts = dict.fromkeys(("hit", "miss", "error", "bypass"), 0)
        self._inflight: dict[str, asyncio.Task] = {}
        self._writes: set[asyncio.Task] = set()
        self._up, self._probing, self._retry_at = True, False, 0.0
        self._refusing_writes = False
        self._local = _LocalLRU(settings.local_cache_entries, settings.cache_ttl_s)
        self._redis: redis.Redis | None = None
        self._password, self._where = "", ""
        if settings.redis_url is not None:
            url = settings.redis_url.get_secret_value()
            self._password = urlsplit(url).password or ""
            self._where = _location(url)
            # Timeouts on the socket and (below) around each command. One immediate retry on a
            # connection error only: a pooled socket goes stale whenever Redis restarts, and the
            # retry reconnects it. Never on a timeout: asking a slow Redis twice doubles the wait.
            self._redis = redis.Redis.from_url(
                url,
                socket_timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
        metrics.cache_backend_up.set(1)

    @property
    def backend(self) -> str:
        return "memory" if self._redis is None else "redis"

    def memoize(self, fn: _Predict) -> Callable[..., Awaitable[Cached]]:
        """Wrap `fn` so `await wrapped(capture, use_cache=True)` returns a `Cached`.

        A hit never calls `fn`. Concurrent calls with the same digest share one
        lookup and one `fn` call; its result or exception goes to all of them.
        `use_cache=False` calls `fn` directly and leaves the cache untouched.
        """

        @functools.wraps(fn)
        async def cached(capture: CaptureSet, use_cache: bool = True) -> Cached:
            if not use_cache:
                self._count("bypass")
                return Cached(await fn(capture), hit=False)
            key = self._prefix + capture.digest.hex()
            flight = self._inflight.get(key)
            if flight is None and self._redis is None:
                # In-process hit: answer without a task, so the request never yields to
                # the event loop (and never waits behind other requests) on its way out.
                raw = self._local.get(key)
                value = decode_value(raw) if raw is not None else None
                if value is not None:
                    self._count("hit")
                    return Cached(value, hit=True)
            if flight is None:
                # A task, not the first caller's own coroutine: if that caller is cancelled
                # (client gone) the others still get their answer.
                flight = asyncio.ensure_future(self._lookup(key, fn, capture))
                self._inflight[key] = flight
                flight.add_done_callback(functools.partial(self._landed, key))
            value, hit = await asyncio.shield(flight)
            return Cached(value, hit)

        return cached

    async def _lookup(self, key: str, fn: _Predict, capture: CaptureSet) -> tuple[ModelOutput, bool]:
        raw, outcome = await self._get(key)
        if raw is not None:
            value = decode_value(raw)
            if value is not None:
                self._count("hit")
                return value, True
            self._metrics.cache_corrupt.inc()
        self._count(outcome)
        try:
            value = await fn(capture)
        except BaseException:
            if raw is not None:
                self._put(key, None)
            raise
        if outcome == "miss":
            self._put(key, encode_value(value))  # None (not cacheable) deletes a corrupt entry
        return value, False

    def _landed(self, key: str, flight: asyncio.Task) -> None:
        if self._inflight.get(key) is flight:
            del self._inflight[key]
        if not flight.cancelled():
            flight.exception()  # retrieved here too: every caller may have been cancelled

    async def _get(self, key: str) -> tuple[bytes | None, str]:
        """(stored bytes or None, "miss" or "error"). Never raises for a backend fault."""
        if self._redis is None:
            return self._local.get(key), "miss"
        if not self._closed_or_probe():
            return None, "error"
        try:
            async with asyncio.timeout(self._timeout_s):
                # the client is made without decode_responses: values come back as bytes
                raw = cast(bytes | None, await self._redis.get(key))
        except ResponseError:
            raw = b""  # e.g. WRONGTYPE: a foreign key under our name, dropped like a corrupt value
        except asyncio.CancelledError:
            self._probing = False  # a cancelled probe must not block the next one
            raise
        except Exception as exc:
            self._fault(exc)
            return None, "error"
        self._answered()
        return raw, "miss"

    def _put(self, key: str, raw: bytes | None) -> None:
        """Store `raw` under `key`, or delete the key if None. Redis writes run in the background."""
        if self._redis is None:
            if raw is None:
                self._local.delete(key)
            else:
                self._local.set(key, raw)
        elif self._up and len(self._writes) < MAX_PENDING_WRITES:
            task = asyncio.create_task(self._write(self._redis, key, raw))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write(self, client: redis.Redis, key: str, raw: bytes | None) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await (client.delete(key) if raw is None else client.set(key, raw, ex=self._ttl_s))
        except ResponseError as exc:
            # Redis answered: it refuses this write (OOM at maxmemory with a noeviction
            # policy, a read-only replica), but it is up, and reads still hit.
            self._write_refused(exc)
        except Exception as exc:
            self._fault(exc)
        else:
            if self._refusing_writes:
                self._refusing_writes = False
                log.warning("cache: Redis at %s takes writes again", self._where)

    def _write_refused(self, exc: ResponseError) -> None:
        self._metrics.cache_write_refusals.inc()
        if not self._refusing_writes:  # once until a write succeeds again
            self._refusing_writes = True
            msg = "cache: Redis at %s refuses writes (%s); still reading from it, new answers go uncached"
            log.warning(msg, self._where, type(exc).__name__)

    def _closed_or_probe(self) -> bool:
        """True while Redis is healthy, and for one probing request once `cache_retry_s` has passed."""
        if self._up:
            return True
        if self._probing or time.monotonic() < self._retry_at:
            return False
        self._probing = True
        return True

    def _fault(self, exc: Exception) -> None:
        self._probing = False
        self._retry_at = time.monotonic() + self._retry_s
        if self._up:  # once per outage, not once per request
            self._up = False
            self._metrics.cache_backend_up.set(0)
            detail = f"{type(exc).__name__}: {exc}"
            if self._password:
                detail = detail.replace(self._password, "***")
            msg = "cache: Redis at %s failed (%s); serving uncached, retrying every %gs"
            log.warning(msg, self._where, detail, self._retry_s)

    def _answered(self) -> None:
        if not self._up:
            self._up, self._probing = True, False
            self._metrics.cache_backend_up.set(1)
            log.warning("cache: Redis at %s is back; caching resumed", self._where)

    def _count(self, outcome: str) -> None:
        self._counts[outcome] += 1
        self._metrics.cache_requests.labels(outcome=outcome).inc()

    def stats(self) -> dict[str, object]:
        """This process's view, for the model-info endpoint."""
        c = self._counts
        stats = {"backend": self.backend, "up": self._up, "ttl_s": self._ttl_s, "hits": c["hit"]}
        stats |= {"misses": c["miss"], "errors": c["error"], "bypasses": c["bypass"]}
        if self._redis is None:
            stats |= {"entries": len(self._local), "max_entries": self._local.entries}
        return stats

    async def ping(self) -> bool:
        """Whether the backend answers now (always True in memory). Does not change the circuit."""
        if self._redis is None:
            return True
        try:
            async with asyncio.timeout(self._timeout_s):
                return bool(await self._redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        """Let pending writes finish (each is bounded by the timeout), then close the connections."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()


def _location(url: str) -> str:
    """scheme://host:port/db of a Redis URL, without user or password, for logs."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
    except ValueError:
        return "redis (unparseable URL)"
