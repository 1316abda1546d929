"""The feature recipe, the one implementation for training and serving.

Features are log mel power per receiver: the complex STFT of the baseband IQ,
folded onto |frequency| (a baseband emission may sit either side of the
carrier), a mel filterbank (Slaney's scale, as librosa's default), power in dB full scale, then fixed
normalization constants from training. No per-capture or per-receiver
standardization: the relative power between receivers is most of the position
information. A station's declared gain offset (the contract's `gain_offset_db`)
is subtracted from its power, so a measured calibration error is corrected
without retraining. A missing receiver is an all-zero channel, which the model was
trained to read as "not heard".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

from heimdall.contract.document import Contract
from heimdall.contract.filterbank import mel_filterbank, periodic_hann

INT16_FULL_SCALE = 32768.0


class FeatureExtractor:
    """Computes the contract's feature tensor. The one implementation, for training and serving."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.spec = contract.features
        self._index = {rid: i for i, rid in enumerate(contract.receiver_ids)}

    @cached_property
    def _gain_correction(self) -> np.ndarray | None:
        """(receivers, 1, 1) float32 offsets in normalized units, subtracted from each station's
        features; None when every offset is 0, so uncorrected features cost nothing extra."""
        offsets = np.array([r.gain_offset_db for r in self.contract.receivers], dtype=np.float64)
        if not offsets.any():
            return None
        return (offsets / self.spec.norm_scale_db).astype(np.float32)[:, None, None]

    @cached_property
    def _window(self) -> np.ndarray:
        return periodic_hann(self.spec.n_fft).astype(np.float32)  # the contract's only window, "hann"

    @cached_property
    def _fold_mel(self) -> np.ndarray:
        """(n_fft, n_mels): folds the two-sided power spectrum onto |f|, then applies the mel filterbank.

        Includes the 1/sum(window)^2 scaling, so a full-scale complex tone on a
        bin centre reads 0 dB in the mel band whose peak it sits on.
        """
        s = self.spec
        mel = mel_filterbank(s.sample_rate_hz, s.n_fft, s.n_mels, s.fmin_hz, s.fmax_hz)  # over 0 .. fs/2
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
        # scipy's FFT keeps complex64 where numpy's promotes to complex128: half the memory
        # traffic in preprocessing's largest step (`make bench` times the whole path).
        spectrum = scipy.fft.fft(frames * self._window, axis=-1, overwrite_x=True)
        power = spectrum.real**2 + spectrum.imag**2
        # As one 2-D matmul: numpy runs a stacked (..., n_frames, n_fft) matmul as one small
        # product per stack entry, where one large product keeps BLAS busy on a single block.
        mel = (power.reshape(-1, s.n_fft) @ self._fold_mel).reshape(*power.shape[:-1], s.n_mels)
        # (10 log10(mel) - offset) / scale as one affine map of ln(mel), in place: numpy's
        # float32 log is vectorized (SIMD) and its log10 is not.
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
        if self._gain_correction is not None:
            features -= self._gain_correction
        features[~heard] = 0.0
        return features

    def warm_up(self) -> None:
        """Features of a silent capture set: the filterbank is built and scipy loads its FFT code
        on first use, which the first request after start-up would otherwise wait for."""
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
            features = self.log_mel(np.stack(iq))
            if self._gain_correction is not None:
                features -= self._gain_correction[list(receivers)]
            out[rows, receivers] = features
        return out


def iq_from_int16(interleaved: np.ndarray) -> np.ndarray:
    """WebSDR interleaved int16 I/Q (..., 2 * samples) -> complex64 full-scale (..., samples)."""
    pairs = interleaved.astype(np.float32).reshape(*interleaved.shape[:-1], -1, 2) / INT16_FULL_SCALE
    return pairs[..., 0] + 1j * pairs[..., 1]
