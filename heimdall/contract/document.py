"""The model contract: the document that travels with the model (MLflow, the BentoML store).

Everything needed to reproduce the features and read the outputs: the feature recipe,
the ordered receivers, the local frame's reference point, the graph's input and output
names, and the accuracy measured when the model was trained. `heimdall.contract.features`
computes the features from it; nothing else defines them.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from heimdall.contract.stations import REFERENCE_LAT, REFERENCE_LON, STATIONS, Station

# 2 adds per-station gain offsets (Station.gain_offset_db); a version-1 document is a
# version-2 one with every offset 0, and is still served.
CONTRACT_VERSION = 2
SUPPORTED_CONTRACT_VERSIONS = frozenset({1, 2})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureSpec(_Frozen):
    """How IQ becomes the model's input tensor (receivers, n_mels, n_frames)."""

    sample_rate_hz: float = 12_500.0
    n_fft: int = Field(256, description="STFT size, samples")
    hop: int = Field(128, description="STFT hop, samples")
    window: Literal["hann"] = "hann"
    n_mels: int = 32
    fmin_hz: float = 0.0
    fmax_hz: float = 6_250.0
    n_frames: int = Field(31, description="frames of a 4096-sample capture: 1 + (4096 - 256) // 128")
    crop_pad: Literal["first-frames-wrap"] = Field(
        "first-frames-wrap",
        description="longer captures keep their first n_frames frames; "
        "shorter ones repeat their frames cyclically",
    )
    db_floor: float = Field(-140.0, description="power floor, dB full scale")
    # Defaults: mean and standard deviation of heard log-mel power (dBFS) over the
    # reference model's 24,000 training scenes (heimdall/train.py measures them).
    norm_offset_db: float = Field(-81.82, description="subtracted from dBFS power (training constant)")
    norm_scale_db: float = Field(16.22, description="dBFS power is divided by this after the offset")

    @property
    def min_samples(self) -> int:
        """Fewest IQ samples that make one STFT frame."""
        return self.n_fft


class ReferencePoint(_Frozen):
    lat: float = REFERENCE_LAT
    lon: float = REFERENCE_LON


class ModelIO(_Frozen):
    input: str = "features"
    mean: str = "mean_en"
    mean_units: str = "metres east, metres north of the reference point"
    covariance: str = "cov"
    covariance_units: str = "sigma east (m), sigma north (m), correlation (-1..1)"


class ConditionAccuracy(_Frozen):
    """Held-out figures in one simulated condition (heimdall/training/conditions.py), kilometres."""

    condition: str
    scenes: int
    median_error_km: float
    p95_error_km: float
    baseline_median_error_km: float
    baseline_p95_error_km: float
    oracle_median_error_km: float = Field(description="what received power allows: a Bayesian grid oracle")
    oracle_p95_error_km: float
    coverage_50: float
    coverage_95: float
    world_oracle_median_error_km: float | None = Field(
        None, description="the oracle knowing only the training distribution (WORLD), not the condition"
    )
    world_oracle_coverage_50: float | None = Field(
        None, description="inside that oracle's posterior 50% ellipse (its mean and covariance)"
    )
    world_oracle_coverage_95: float | None = None


class Accuracy(_Frozen):
    """Held-out evaluation figures measured when the model was trained."""

    scenes: int
    median_error_km: float
    p95_error_km: float
    coverage_50: float = Field(description="fraction of true positions inside the predicted 50% ellipse")
    coverage_95: float = Field(description="fraction of true positions inside the predicted 95% ellipse")
    baseline: str
    baseline_median_error_km: float
    baseline_p95_error_km: float
    conditions: tuple[ConditionAccuracy, ...] = Field(
        (), description="the same figures over a grid of conditions"
    )


class Contract(_Frozen):
    contract_version: int = CONTRACT_VERSION
    features: FeatureSpec = FeatureSpec()
    receivers: tuple[Station, ...] = STATIONS
    min_receivers: int = Field(3, description="fewest receivers a request must carry")
    reference: ReferencePoint = ReferencePoint()
    io: ModelIO = ModelIO()
    accuracy: Accuracy | None = None

    @model_validator(mode="after")
    def _offsets_need_version_2(self) -> Contract:
        if self.contract_version < 2 and (offset := [r.id for r in self.receivers if r.gain_offset_db]):
            raise ValueError(
                f"gain_offset_db of {offset} needs contract_version 2, found {self.contract_version}"
            )
        return self

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Per-item input shape (receivers, mel bins, frames); the batch axis is dynamic."""
        return (len(self.receivers), self.features.n_mels, self.features.n_frames)

    @cached_property
    def receiver_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.receivers)  # read twice per request: built once

    def fingerprint(self) -> str:
        """Digest of everything that changes the features or the meaning of the outputs."""
        payload = self.model_dump(mode="json", exclude={"accuracy"})
        for receiver in payload["receivers"]:  # zero offsets left out: a version-1 contract keeps its digest
            if not receiver["gain_offset_db"]:
                del receiver["gain_offset_db"]
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def load(cls, path: Path) -> Contract:
        return cls.model_validate_json(Path(path).read_text())
