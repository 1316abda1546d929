"""The STFT window and mel filterbank of the feature recipe, in numpy.

The same numbers as librosa's `filters.get_window('hann', n, fftbins=True)` and
`filters.mel(..., htk=False, norm=None)` (tests/test_features.py compares them), without
importing librosa at serve time: librosa.filters imports scipy.signal and numba, seconds of
every worker's start-up, for two arrays computed once.
"""

from __future__ import annotations

import numpy as np

# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_MEL_STEP_HZ = 200.0 / 3.0
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ / _MEL_STEP_HZ
_LOG_STEP = np.log(6.4) / 27.0


def periodic_hann(n: int) -> np.ndarray:
    """The periodic ("fftbins") Hann window of length n, float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def hz_to_mel(hz: float | np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _MEL_STEP_HZ
    logarithmic = _LOG_START_MEL + np.log(np.maximum(hz, _LOG_START_HZ) / _LOG_START_HZ) / _LOG_STEP
    return np.where(hz >= _LOG_START_HZ, logarithmic, linear)


def mel_to_hz(mel: float | np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _MEL_STEP_HZ
    logarithmic = _LOG_START_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _LOG_START_MEL) - _LOG_START_MEL))
    return np.where(mel >= _LOG_START_MEL, logarithmic, linear)


def mel_frequencies(n: int, fmin: float, fmax: float) -> np.ndarray:
    """n frequencies (Hz) equally spaced on the mel scale from fmin to fmax."""
    return mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n))


def mel_filterbank(sample_rate: float, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 triangular filters over the one-sided FFT bins,
    unnormalized (peak 1): each band rises from its lower neighbour's centre to its own
    and falls to its upper neighbour's."""
    edges = mel_frequencies(n_mels + 2, fmin, fmax)
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, np.fft.rfftfreq(n_fft, d=1.0 / sample_rate))
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
