"""Prometheus metrics beyond BentoML's built-ins.

Built inside the service's `__init__`, never at import: BentoML sets
PROMETHEUS_MULTIPROC_DIR in each worker after importing the service module,
and prometheus_client must see it before the first metric exists.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.preprocess_seconds = Histogram(
            "heimdall_preprocess_seconds",
            "IQ to feature tensors, per model call (one batch of capture sets)",
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "heimdall_inference_seconds", "One batched ONNX run", buckets=_FAST_BUCKETS, registry=registry
        )
        self.cache_requests = Counter(
            "heimdall_cache_requests",
            "Cache lookups by outcome (hit, miss, error, bypass)",
            ["outcome"],
            registry=registry,
        )
        self.cache_corrupt = Counter(
            "heimdall_cache_corrupt_entries",
            "Cache entries that failed validation and were dropped",
            registry=registry,
        )
        self.cache_write_refusals = Counter(
            "heimdall_cache_write_refusals",
            "Cache writes Redis answered with an error (OOM at maxmemory, read-only): not an outage",
            registry=registry,
        )
        self.cache_backend_up = Gauge(
            "heimdall_cache_backend_up",
            "1 while the shared cache (Redis) answers, 0 while serving uncached",
            multiprocess_mode="min",
            registry=registry,
        )
        self.rejections = Counter(
            "heimdall_rejected_requests",
            "Requests refused (4xx, or 503 when overloaded), by reason",
            ["reason"],
            registry=registry,
        )
        self.predictions = Counter(
            "heimdall_predictions",
            "Capture sets answered, by source (model, cache)",
            ["source"],
            registry=registry,
        )
