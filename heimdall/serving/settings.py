"""Runtime settings: one typed object, environment prefix HEIMDALL_, validated at start-up."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

import redis.asyncio
from bentoml.exceptions import BentoMLConfigException
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DB = re.compile(r"(/[0-9]*)?")
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")
_MODEL_URI_EXPECTED = (
    "models:/NAME@ALIAS or models:/NAME/VERSION (e.g. models:/heimdall-localizer@production)"
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEIMDALL_", extra="forbid")

    model_tag: str = Field("heimdall-localizer:latest", description="BentoML model store tag (name:version)")
    redis_url: SecretStr | None = Field(
        None, description="redis://[:password@]host:port/db or rediss:// for TLS; unset = in-process cache"
    )
    cache_ttl_s: int = Field(3600, ge=1, le=30 * 86400, description="cache entry lifetime, seconds")
    cache_timeout_ms: float = Field(
        150.0, gt=0, le=5000, description="longest a request waits on Redis before serving uncached"
    )
    cache_retry_s: float = Field(
        5.0, gt=0, le=600, description="pause before Redis is tried again after a fault"
    )
    local_cache_entries: int = Field(
        10_000, ge=0, le=10_000_000, description="in-process cache size, entries"
    )
    adaptive_batching: bool = Field(
        True,
        description="batch concurrent requests through BentoML's batcher; false calls the model per request",
    )
    max_batch_size: int = Field(64, ge=2, le=1024, description="adaptive batcher: most rows in one ONNX run")
    max_latency_ms: int = Field(
        1000, ge=1, le=60_000, description="adaptive batcher: latency budget, ms; it answers 503 beyond it"
    )
    onnx_threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads per worker")
    access_log: bool = Field(
        False, description="one log line per request; the Prometheus metrics count requests either way"
    )
    workers: int = Field(2, ge=1, le=64, description="BentoML worker processes")
    max_body_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="largest request body, bytes, refused before parsing",
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, le=1024**2, description="largest request line and headers, bytes; beyond it, 431"
    )
    body_grace_s: float = Field(
        5.0, gt=0, le=600, description="seconds a request body may take before its pace is checked"
    )
    body_min_rate: float = Field(
        16384.0,
        gt=0,
        description="bytes a second a body must average once `body_grace_s` is up; slower ones get 408",
    )
    max_in_flight: int = Field(
        32, ge=1, le=100_000, description="requests one worker works on at once; beyond it, 503 at once"
    )
    max_samples: int = Field(65_536, ge=256, description="most IQ samples per receiver")
    max_batch_items: int = Field(100, ge=1, le=10_000, description="most capture sets in one batch request")
    confidence_radius_m: float = Field(
        10_000.0, gt=0, description="`confidence` is the probability the transmitter is within this radius"
    )
    map_tile_url: str | None = Field(
        None,
        description="map page background tiles, https://host/{z}/{x}/{y}.png (Web Mercator); "
        "unset = stations on a plain projected map, no request leaves the page",
    )
    map_tile_attribution: str = Field(
        "", max_length=200, description="credit line shown under the map's tiles (e.g. © OpenStreetMap)"
    )

    model_uri: str | None = Field(
        None,
        description="registry model to follow, models:/NAME@ALIAS (MLflow at MLFLOW_TRACKING_URI); "
        "unset = serve the Bento's model only",
    )
    registry_poll_s: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="how often each worker asks the registry where its aliases point, s",
    )
    candidate_uri: str | None = Field(
        None, description="a second registry model served beside the primary, e.g. models:/NAME@candidate"
    )
    candidate_mode: Literal["canary", "shadow"] = Field(
        "canary",
        description="canary: the candidate answers `candidate_share` of clients; "
        "shadow: the primary answers all, the candidate runs beside it for comparison",
    )
    candidate_share: float = Field(
        0.1, ge=0, le=1, description="canary: share of client keys the candidate answers, 0..1"
    )
    admin_token: SecretStr | None = Field(
        None, description="bearer token of the /v1/admin routes; unset = those routes are off (404)"
    )

    @field_validator("model_uri", "candidate_uri")
    @classmethod
    def _model_uri(cls, v: str | None) -> str | None:
        if v is not None and not MODEL_URI.match(v):
            raise ValueError(f"expected {_MODEL_URI_EXPECTED}")
        return v

    @field_validator("admin_token")
    @classmethod
    def _token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("expected at least 16 characters (e.g. the output of `openssl rand -hex 24`)")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: SecretStr | None) -> SecretStr | None:
        """The URL as redis-py will read it, checked here so a bad one is one settings line.

        Nothing of the URL goes into the message: redis-py's own errors quote pieces of it
        (`Port could not be cast to integer value as '<the password up to a />'`).
        """
        if v is None:
            return v
        url = v.get_secret_value()
        expected = "expected redis://host:port/db, rediss://host:port/db (TLS) or unix:///path"
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(expected)
        try:
            parts = urlsplit(url)
            # Building a connection (it does not connect) applies every query option.
            redis.asyncio.ConnectionPool.from_url(url).make_connection()
        except (ValueError, TypeError):
            raise ValueError(
                f"{expected}, with a password's reserved characters percent-encoded "
                "('/' as %2F, '#' as %23, '?' as %3F, '@' as %40, '%' as %25), "
                "and only redis-py's query options"
            ) from None
        if parts.scheme != "unix" and (not parts.hostname or not _DB.fullmatch(parts.path)):
            raise ValueError(f"{expected}: a host, and a database number (or none) after the port")
        return v

    @field_validator("model_tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        name, _, version = v.partition(":")
        if not name or (":" in v and not version):
            raise ValueError(f"expected NAME or NAME:VERSION (e.g. heimdall-localizer:latest), got {v!r}")
        return v


def load_settings() -> Settings:
    """Settings from the environment; a bad value stops start-up with one line naming each variable.

    BentoML's CLI prints a BentoMLException as one line, without a traceback. Values are left
    out: HEIMDALL_REDIS_URL may carry a password.
    """
    try:
        return Settings()
    except ValidationError as exc:
        prefix = Settings.model_config["env_prefix"]
        problems = "; ".join(
            f"{prefix}{'.'.join(map(str, e['loc'])).upper()}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_input=False)
        )
        raise BentoMLConfigException(f"invalid settings: {problems}") from None
