"""The model contract: the feature recipe and the document that travels with the model.

Training and serving both compute features with `FeatureExtractor`, built from
the contract document alone, so the two can never disagree.

Features are log mel power per receiver: the complex STFT of the baseband IQ,
folded onto |frequency| (a baseband emission may sit either side of the
carrier), a librosa mel filterbank, power in dB full scale, then fixed
normalization constants from training. No per-capture or per-receiver
standardization: the relative power between receivers is most of the position
information. A missing receiver is an all-zero channel, which the model was
trained to read as "not heard".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

import librosa
import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import BaseModel, ConfigDict, Field

from heimdall.stations import REFERENCE_LAT, REFERENCE_LON, STATIONS, Station

CONTRACT_VERSION = 1
SUPPORTED_CONTRACT_VERSIONS = frozenset({1})
INT16_FULL_SCALE = 32768.0


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


class Contract(_Frozen):
    contract_version: int = CONTRACT_VERSION
    features: FeatureSpec = FeatureSpec()
    receivers: tuple[Station, ...] = STATIONS
    min_receivers: int = Field(3, description="fewest receivers a request must carry")
    reference: ReferencePoint = ReferencePoint()
    io: ModelIO = ModelIO()
    accuracy: Accuracy | None = None

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
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def load(cls, path: Path) -> Contract:
        return cls.model_validate_json(Path(path).read_text())


class FeatureExtractor:
    """Computes the contract's feature tensor. The one implementation, for training and serving."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.spec = contract.features
        self._index = {rid: i for i, rid in enumerate(contract.receiver_ids)}

    @cached_property
    def _window(self) -> np.ndarray:
        return librosa.filters.get_window(self.spec.window, self.spec.n_fft, fftbins=True).astype(np.float32)

    @cached_property
    def _fold_mel(self) -> np.ndarray:
        """(n_fft, n_mels): folds the two-sided power spectrum onto |f|, then applies the mel filterbank.

        Includes the 1/sum(window)^2 scaling, so a full-scale complex tone on a
        bin centre reads 0 dB in the mel band whose peak it sits on.
        """
        s = self.spec
        mel = librosa.filters.mel(
            sr=s.sample_rate_hz, n_fft=s.n_fft, n_mels=s.n_mels, fmin=s.fmin_hz, fmax=s.fmax_hz, norm=None
        )  # (n_mels, n_fft // 2 + 1) over 0 .. fs/2
        k = np.arange(s.n_fft)
        folded_bin = np.minimum(k, s.n_fft - k)  # two-sided FFT bin -> |f| bin
        return (mel[:, folded_bin].T / self._window.sum() ** 2).astype(np.float32)

    def log_mel(self, iq: np.ndarray) -> np.ndarray:
        """Normalized log mel power of complex baseband IQ.

        `iq`: complex64 (..., samples) in full-scale units (|x| <= 1), at least
        `n_fft` samples. Returns float32 (..., n_mels, n_frames).
        """
        s = self.spec
        frames = sliding_window_view(iq, s.n_fft, axis=-1)[..., :: s.hop, :]
        n = frames.shape[-2]
        if n >= s.n_frames:
            frames = frames[..., : s.n_frames, :]
        else:
            frames = np.take(frames, np.arange(s.n_frames) % n, axis=-2)
        # scipy's FFT keeps complex64 (numpy's promotes to complex128): ~5x faster here.
        spectrum = scipy.fft.fft(frames * self._window, axis=-1, overwrite_x=True)
        power = spectrum.real**2 + spectrum.imag**2
        # As one 2-D matmul: numpy runs a stacked (..., n_frames, n_fft) matmul as one small
        # product per stack entry, ~2.4x slower for a capture set's 7 receivers.
        mel = (power.reshape(-1, s.n_fft) @ self._fold_mel).reshape(*power.shape[:-1], s.n_mels)
        # (10 log10(mel) - offset) / scale as one affine map of ln(mel), in place: numpy's
        # float32 log is vectorized and its log10 is not (~4x slower here).
        np.maximum(mel, np.float32(10.0 ** (s.db_floor / 10.0)), out=mel)
        np.log(mel, out=mel)
        mel *= np.float32(10.0 / np.log(10.0) / s.norm_scale_db)
        mel -= np.float32(s.norm_offset_db / s.norm_scale_db)
        return np.swapaxes(mel, -1, -2)

    def scenes(self, iq: np.ndarray, heard: np.ndarray) -> np.ndarray:
        """Training path: features of N simulated scenes with equal-length captures.

        `iq`: complex64 (N, receivers, samples); `heard`: bool (N, receivers).
        Returns float32 (N, receivers, n_mels, n_frames), unheard receivers zeroed.
        """
        features = np.ascontiguousarray(self.log_mel(iq))
        features[~heard] = 0.0
        return features

    def warm_up(self) -> None:
        """Features of a silent capture set: librosa and scipy load their filter and FFT code
        on first use, ~1.5 s that the first request after start-up would otherwise wait for."""
        silence = np.zeros(self.spec.min_samples, np.complex64)
        self.capture_sets([dict.fromkeys(self.contract.receiver_ids[: self.contract.min_receivers], silence)])

    def capture_sets(self, sets: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        """Serving path: features of capture sets, each keyed by station id.

        Captures may differ in length; receivers absent from a set are zeroed.
        Returns float32 (sets, receivers, n_mels, n_frames). Captures of the same
        length, across all the sets, go through one `log_mel` call: a batch's FFTs
        and products run as one.
        """
        out = np.zeros((len(sets), *self.contract.input_shape), dtype=np.float32)
        by_length: dict[int, list[tuple[int, int, np.ndarray]]] = {}
        for row, captures in enumerate(sets):
            for rid, iq in captures.items():
                by_length.setdefault(iq.shape[-1], []).append((row, self._index[rid], iq))
        for group in by_length.values():
            rows, receivers, iq = zip(*group, strict=True)
            out[rows, receivers] = self.log_mel(np.stack(iq))
        return out


def iq_from_int16(interleaved: np.ndarray) -> np.ndarray:
    """WebSDR interleaved int16 I/Q (..., 2 * samples) -> complex64 full-scale (..., samples)."""
    pairs = interleaved.astype(np.float32).reshape(*interleaved.shape[:-1], -1, 2) / INT16_FULL_SCALE
    return pairs[..., 0] + 1j * pairs[..., 1]


def receiver_mask(contract: Contract, present: Sequence[str]) -> np.ndarray:
    ids = set(present)
    return np.array([rid in ids for rid in contract.receiver_ids])
