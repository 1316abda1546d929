"""Prometheus metrics beyond BentoML's built-ins.

Built inside the service's `__init__`, never at import: BentoML sets
PROMETHEUS_MULTIPROC_DIR in each worker after importing the service module,
and prometheus_client must see it before the first metric exists.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_KM_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0)
# 1 - exp(-m^2 / 2) for a Mahalanobis distance m: the smallest ellipse level holding the point
_LEVEL_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
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
        # The routes the front door answers (heimdall/serving/direct.py) bypass BentoML's own
        # request metrics (bentoml_service_request_*), so they have their own.
        self.requests_in_progress = Gauge(
            "heimdall_requests_in_progress",
            "Requests to the front door's routes a worker has taken (headers read), by endpoint",
            ["endpoint"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.requests = Counter(
            "heimdall_requests",
            "Requests answered by the front door's routes, by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "heimdall_request_seconds",
            "Time from a complete body to the answer, by endpoint",
            ["endpoint"],
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "heimdall_predictions",
            "Capture sets answered, by source (model, cache)",
            ["source"],
            registry=registry,
        )
        self.model_predictions = Counter(
            "heimdall_model_predictions",
            "Capture sets answered, by the model version that made the answer and its role",
            ["model_version", "role"],
            registry=registry,
        )
        self.model_swaps = Counter(
            "heimdall_model_swaps",
            "Model versions swapped in from the registry, by role (primary, candidate)",
            ["role"],
            registry=registry,
        )
        self.model_refusals = Counter(
            "heimdall_model_refusals",
            "Registry versions refused (failed a check or the warm-up), by role; the old one kept serving",
            ["role"],
            registry=registry,
        )
        self.registry_errors = Counter(
            "heimdall_registry_errors",
            "Registry checks that failed (unreachable, or the alias not found)",
            registry=registry,
        )
        self.shadow_distance_km = Histogram(
            "heimdall_shadow_distance_km",
            "Shadow mode: distance between the primary's and the candidate's positions, km",
            buckets=_KM_BUCKETS,
            registry=registry,
        )
        self.shadow_ellipse_level = Histogram(
            "heimdall_shadow_ellipse_level",
            "Shadow mode: smallest confidence level whose ellipse (of `ellipse`) holds the other's position",
            ["ellipse"],
            buckets=_LEVEL_BUCKETS,
            registry=registry,
        )
        self.shadow_skipped = Counter(
            "heimdall_shadow_skipped",
            "Shadow comparisons skipped because as many were already running as a worker takes requests",
            registry=registry,
        )
