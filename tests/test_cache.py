"""The prediction cache against real Redis servers: the shared one and our own, which we kill and pause."""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import subprocess
import time
import uuid

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry
from support import RedisServer

from heimdall.contract.document import Contract
from heimdall.serving.cache import Cached, PredictionCache, decode_value, encode_value
from heimdall.serving.decode import CaptureSet, decode_captures
from heimdall.serving.inference import ModelOutput
from heimdall.serving.metrics import Metrics
from heimdall.serving.settings import Settings

SHARED_URL = "redis://127.0.0.1:6379/0"
CONTRACT = Contract()


def capture(seed: int) -> CaptureSet:
    rng = np.random.default_rng(seed)
    iq = [(s, rng.integers(-2000, 2000, size=(256, 2)).tolist()) for s in CONTRACT.receiver_ids[:3]]
    return decode_captures(iq, "int16", CONTRACT, 4096)


def answer(c: CaptureSet) -> ModelOutput:
    """A deterministic stand-in for the model: distinct per capture, always a valid covariance."""
    return ModelOutput(float(c.digest[0]), -float(c.digest[1]), 100.0 + c.digest[2], 250.0, 0.25)


class Model:
    """Counts its calls; `gate`, when set, holds every call until the test opens it."""

    def __init__(self, fail: bool = False) -> None:
        self.calls, self.fail, self.gate = 0, fail, None

    async def __call__(self, c: CaptureSet) -> ModelOutput:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("model exploded")
        return answer(c)


class Harness:
    def __init__(self, url: str | None, namespace: str | None = None, **settings) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(registry=self.registry)
        self.namespace = namespace or f"test-{uuid.uuid4().hex}:1:fp"
        # Generous by default: these tests are about semantics, and a loaded CI machine can take more
        # than the production 50 ms to open the first connection. The outage tests set their own.
        settings.setdefault("cache_timeout_ms", 1000)
        self.cache = PredictionCache(Settings(redis_url=url, **settings), self.namespace, self.metrics)
        self.model = Model()
        self.predict = self.cache.memoize(self.model)

    def key(self, c: CaptureSet) -> str:
        return f"heimdall:{self.namespace}:{c.digest.hex()}"

    def count(self, outcome: str) -> float:
        return self.registry.get_sample_value("heimdall_cache_requests_total", {"outcome": outcome}) or 0.0

    def corrupt(self) -> float:
        return self.registry.get_sample_value("heimdall_cache_corrupt_entries_total") or 0.0

    def up(self) -> float:
        return self.registry.get_sample_value("heimdall_cache_backend_up")


@pytest.fixture
def shared():
    """The shared Redis; every key a test writes lives under its own namespace and is removed after."""
    client = redis.Redis.from_url(SHARED_URL)
    namespaces: list[str] = []
    yield client, namespaces
    for ns in namespaces:
        for key in client.scan_iter(f"heimdall:{ns}:*"):
            client.delete(key)
    client.close()


@pytest.fixture
def own(tmp_path):
    server = RedisServer(tmp_path, password="s3cret-pw")
    server.start()
    yield server
    server.stop()


async def settled(h: Harness, c: CaptureSet, client: redis.Redis, present: bool = True) -> None:
    """Wait (briefly) for the background write of `c`'s key to land."""
    for _ in range(100):
        if bool(client.exists(h.key(c))) == present:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"key {'never written' if present else 'never deleted'}")


def test_value_format_round_trips_and_rejects_implausible_values():
    good = ModelOutput(1.5, -2.5, 10.0, 20.0, -0.5)
    raw = encode_value(good)
    assert len(raw) == 44 and decode_value(raw) == good
    assert encode_value(ModelOutput(0, 0, 0.0, 1, 0)) is None  # sigma <= 0 is never stored
    for bad in [
        None,
        b"",
        b"junk",
        raw[:-1],
        raw + b"\0",
        b"XXXX" + raw[4:],
        "text",
        struct.pack("<4s5d", b"HMO1", math.nan, 0, 1, 1, 0),
        struct.pack("<4s5d", b"HMO1", 0, 0, 1, -1, 0),
        struct.pack("<4s5d", b"HMO1", 0, 0, 1, 1, 1.0),
        struct.pack("<4s5d", b"HMO1", 0, 0, math.inf, 1, 0),
    ]:
        assert decode_value(bad) is None


def test_miss_then_hit_skips_the_model_and_sets_ttl(shared):
    client, namespaces = shared

    async def scenario():
        h = Harness(SHARED_URL, cache_ttl_s=600)
        namespaces.append(h.namespace)
        c = capture(1)
        first = await h.predict(c)
        assert first == Cached(answer(c), hit=False)
        await settled(h, c, client)
        assert 590 <= client.ttl(h.key(c)) <= 600
        second = await h.predict(c)
        assert second == Cached(answer(c), hit=True)
        assert h.model.calls == 1
        assert (h.count("miss"), h.count("hit"), h.up()) == (1, 1, 1)
        assert h.cache.stats() | {} == {
            "backend": "redis",
            "up": True,
            "ttl_s": 600,
            "hits": 1,
            "misses": 1,
            "errors": 0,
            "bypasses": 0,
        }
        bypass = await h.predict(c, use_cache=False)
        assert bypass == Cached(answer(c), hit=False) and h.model.calls == 2 and h.count("bypass") == 1
        assert await h.cache.ping()
        await h.cache.close()

    asyncio.run(scenario())


def test_a_new_model_version_does_not_read_old_entries(shared):
    client, namespaces = shared
    tag = uuid.uuid4().hex

    async def scenario():
        old, new = Harness(SHARED_URL, f"m-{tag}:1:abc"), Harness(SHARED_URL, f"m-{tag}:2:abc")
        namespaces.extend([old.namespace, new.namespace])
        c = capture(2)
        await old.predict(c)
        await settled(old, c, client)
        assert (await new.predict(c)).hit is False and new.model.calls == 1
        assert (await old.predict(c)).hit is True
        await old.cache.close()
        await new.cache.close()

    asyncio.run(scenario())


def test_single_flight_shares_one_call_errors_and_cancellation(shared):
    client, namespaces = shared

    async def scenario():
        h = Harness(SHARED_URL)
        namespaces.append(h.namespace)
        c = capture(3)
        h.model.gate = asyncio.Event()
        callers = [asyncio.create_task(h.predict(c)) for _ in range(20)]
        await asyncio.sleep(0.05)
        callers[0].cancel()  # the caller that started the flight leaves; the others still get the answer
        h.model.gate.set()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert all(r == Cached(answer(c), hit=False) for r in results[1:])
        assert h.model.calls == 1 and h.count("miss") == 1

        failing = Harness(SHARED_URL)
        namespaces.append(failing.namespace)
        failing.model.fail, failing.model.gate = True, asyncio.Event()
        callers = [asyncio.create_task(failing.predict(c)) for _ in range(5)]
        await asyncio.sleep(0.05)
        failing.model.gate.set()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results) and failing.model.calls == 1
        failing.model.fail = False
        assert (await failing.predict(c)).value == answer(c)  # no stale flight left behind
        assert failing.model.calls == 2 and not failing.cache._inflight
        await h.cache.close()
        await failing.cache.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "stored",
    [
        b"garbage",
        encode_value(ModelOutput(1, 2, 3, 4, 0.5))[:-3],
        b"PKL1" + encode_value(ModelOutput(1, 2, 3, 4, 0))[4:],
        struct.pack("<4s5d", b"HMO1", 1, 2, 3, 4, 1.0),
        struct.pack("<4s5d", b"HMO1", 1, 2, -3, 4, 0),
        struct.pack("<4s5d", b"HMO1", math.nan, 2, 3, 4, 0),
        "a list",
    ],
    ids=["garbage", "truncated", "foreign-magic", "rho=1", "sigma<0", "nan", "wrong-type"],
)
def test_corrupt_or_foreign_entries_are_misses_counted_and_dropped(shared, stored):
    client, namespaces = shared

    async def scenario():
        h = Harness(SHARED_URL)
        namespaces.append(h.namespace)
        c = capture(4)
        if stored == "a list":
            client.rpush(h.key(c), b"x")
        else:
            client.set(h.key(c), stored)
        h.model.fail = True
        with pytest.raises(RuntimeError):
            await h.predict(c)
        await settled(h, c, client, present=False)  # the model failed: the bad entry is deleted
        assert (h.count("miss"), h.count("hit"), h.corrupt(), h.up()) == (1, 0, 1, 1)

        client.set(h.key(c), b"garbage")
        h.model.fail = False
        assert await h.predict(c) == Cached(answer(c), hit=False)
        await asyncio.sleep(0.05)
        assert decode_value(client.get(h.key(c))) == answer(c)  # replaced by the fresh answer
        assert (await h.predict(c)).hit and h.corrupt() == 2
        await h.cache.close()

    asyncio.run(scenario())


def test_outage_serves_uncached_logs_once_and_recovers(own, caplog):
    caplog.set_level(logging.INFO, logger="heimdall.serving.cache")

    async def scenario():
        h = Harness(own.url, cache_timeout_ms=100, cache_retry_s=0.5)
        client = redis.Redis.from_url(own.url)
        c = capture(5)
        await h.predict(c)
        await settled(h, c, client)
        assert (await h.predict(c)).hit

        own.stop()
        for _ in range(10):
            start = time.perf_counter()
            result = await h.predict(c)
            assert result == Cached(answer(c), hit=False)
            assert time.perf_counter() - start < 0.2  # the timeout is 0.1 s
        assert h.up() == 0 and h.count("error") == 10 and h.cache.stats()["up"] is False
        assert not await h.cache.ping()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "serving uncached" in warnings[0].getMessage()
        assert own.password not in caplog.text and str(own.port) in caplog.text

        own.start()  # same port, empty
        assert (await h.predict(c)).hit is False and h.count("error") == 11  # still inside cache_retry_s
        await asyncio.sleep(0.55)
        assert (await h.predict(c)).hit is False  # the probe: Redis answers, a plain miss
        assert h.up() == 1 and "is back" in caplog.text
        await settled(h, c, client)
        assert (await h.predict(c)).hit
        assert len([r for r in caplog.records if "serving uncached" in r.getMessage()]) == 1
        client.close()
        await h.cache.close()

    asyncio.run(scenario())


def test_paused_redis_does_not_stall_requests(own, caplog):
    async def scenario():
        h = Harness(own.url, cache_timeout_ms=100, cache_retry_s=30)
        client = redis.Redis.from_url(own.url)
        await h.predict(capture(6))  # opens a pooled connection before the pause
        before = client.info("stats")["total_commands_processed"]
        client.execute_command("CLIENT", "PAUSE", 2000)
        start = time.perf_counter()
        assert (await h.predict(capture(7))).hit is False
        assert time.perf_counter() - start < 1.0  # waited out the 0.1 s timeout, not the 2 s pause
        try:
            for seed in range(8, 28):  # circuit open: Redis is not even asked
                assert (await h.predict(capture(seed))).hit is False
            assert h.up() == 0 and h.count("error") == 21
            assert sum("serving uncached" in r.getMessage() for r in caplog.records) == 1
            # The server's own count, read once the pause is over: had the 20 requests asked
            # Redis, each would have queued at least one command behind the pause.
            asked = client.info("stats")["total_commands_processed"] - before
            assert asked < 20, f"{asked} commands reached Redis while the circuit was open"
        finally:
            client.close()
            await h.cache.close()

    asyncio.run(scenario())


def test_in_process_cache_is_bounded_lru_with_ttl():
    async def scenario():
        h = Harness(None, local_cache_entries=2, cache_ttl_s=1)
        a, b, c = capture(30), capture(31), capture(32)
        for x in (a, b, a):
            await h.predict(x)
        assert h.model.calls == 2  # a was a hit
        await h.predict(c)  # evicts b, the least recently used
        assert (await h.predict(a)).hit and (await h.predict(c)).hit
        assert (await h.predict(b)).hit is False
        assert h.cache.stats()["entries"] == 2 and h.cache.stats()["backend"] == "memory"
        assert await h.cache.ping() and h.up() == 1
        await asyncio.sleep(1.05)
        assert (await h.predict(a)).hit is False  # expired
        await h.cache.close()

    asyncio.run(scenario())


def test_in_process_cache_can_be_disabled():
    async def scenario():
        h = Harness(None, local_cache_entries=0)
        c = capture(33)
        assert not (await h.predict(c)).hit and not (await h.predict(c)).hit
        assert h.model.calls == 2

    asyncio.run(scenario())


def test_rediss_url_talks_tls_with_a_password_and_never_shows_it(tmp_path, caplog):
    """A real redis-server on a TLS-only port with a password; the URL carries both and the CA."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = RedisServer(tmp_path, password="tls-s3cret", tls=(cert, key))
    server.start()
    try:
        assert server.url.startswith("rediss://")
        client = redis.Redis.from_url(server.url, socket_timeout=0.5)
        with pytest.raises(redis.ConnectionError):  # the port speaks TLS only
            redis.Redis.from_url(f"redis://:tls-s3cret@127.0.0.1:{server.port}/0", socket_timeout=0.5).ping()

        async def scenario():
            h = Harness(server.url)
            c = capture(11)
            assert (await h.predict(c)).hit is False
            await settled(h, c, client)
            assert (await h.predict(c)).hit and h.model.calls == 1
            await h.cache.close()
            return h

        h = asyncio.run(scenario())
        assert client.get(h.key(c := capture(11))) == encode_value(answer(c))
        client.close()
        server.stop()
        with caplog.at_level(logging.WARNING, logger="heimdall.serving.cache"):
            asyncio.run(Harness(server.url).predict(capture(12)))  # Redis gone: served uncached, logged once
        assert "failed" in caplog.text and "tls-s3cret" not in caplog.text
        assert "tls-s3cret" not in str(h.cache.stats())
    finally:
        server.stop()


def test_a_redis_refusing_writes_out_of_memory_keeps_serving_hits(own, caplog):
    caplog.set_level(logging.INFO, logger="heimdall.serving.cache")

    async def scenario():
        h = Harness(own.url)
        client = redis.Redis.from_url(own.url)
        warm = [capture(100 + i) for i in range(3)]
        for c in warm:
            await h.predict(c)
            await settled(h, c, client)
        # At maxmemory with noeviction, Redis answers every SET with an OOM error.
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", used // 2)
        fresh = [capture(200 + i) for i in range(5)]
        for c in fresh:
            assert (await h.predict(c)).hit is False
        for _ in range(100):  # the writes run in the background
            if h.registry.get_sample_value("heimdall_cache_write_refusals_total") == len(fresh):
                break
            await asyncio.sleep(0.01)
        assert h.registry.get_sample_value("heimdall_cache_write_refusals_total") == len(fresh)
        for c in warm:  # reads still served from Redis: the circuit stays closed
            assert (await h.predict(c)).hit
        assert h.up() == 1 and h.count("error") == 0 and h.cache.stats()["up"] is True
        refusals = [r for r in caplog.records if "refuses writes" in r.getMessage()]
        assert len(refusals) == 1 and own.password not in caplog.text
        client.config_set("maxmemory", 0)
        await h.predict(capture(300))
        await h.cache.close()  # lets the pending write finish
        assert "takes writes again" in caplog.text
        client.close()

    asyncio.run(scenario())
