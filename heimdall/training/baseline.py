"""Classical baseline: RSSI least-squares multilateration with unknown transmit power.

Received power P_r (dBm) is measured from each heard capture's IQ: mean |x|^2,
minus the receivers' known thermal noise power, through the calibrated gain.
Under the log-distance model P_r = A - L(d_r) + shadowing, with A (the
transmit power) unknown, the least-squares position minimises over x

    SSE(x) = sum_r (P_r + L(d_r(x)) - A_hat(x))^2,  A_hat(x) = mean_r (P_r + L(d_r(x))),

which is the maximum-likelihood estimate under i.i.d. log-normal shadowing. It
is solved by exhaustive search on a 2 km grid over the coverage area, then a
200 m grid around the best coarse cell; the sums reduce to matrix products, so
thousands of scenes take seconds. The baseline is given the true propagation
law (`simulate.path_loss_db`) and the coverage area, i.e. everything but the
learned model's data.

On the simulated scenes this beats a power-weighted centroid of the heard
stations by a wide margin (the centroid cannot leave the stations' hull and
Giaveno/Coazze double-count), so it is the baseline reported.
"""

from __future__ import annotations

import numpy as np

from heimdall.contract.document import Contract
from heimdall.contract.features import iq_from_int16
from heimdall.training.simulate import (
    FULL_SCALE_DBM,
    coverage_area,
    path_loss_db,
    station_enu,
    thermal_noise_dbm,
)

NAME = "RSSI least-squares multilateration, unknown tx power, known path-loss law (2 km + 200 m grid)"
_NOISE_FLOOR_FRACTION = 0.1  # the weakest signal power kept: 10 dB below the noise, avoids log(<= 0)


def received_power_dbm(iq: np.ndarray, heard: np.ndarray, sample_rate_hz: float) -> np.ndarray:
    """Signal power (N, receivers), dBm, of int16 interleaved IQ (N, receivers, 2 * samples); NaN: unheard."""
    mean_power_fs = np.stack(
        [(np.abs(iq_from_int16(iq[:, r])) ** 2).mean(axis=-1) for r in range(iq.shape[1])], 1
    )
    noise_fs = 10.0 ** ((thermal_noise_dbm(sample_rate_hz) - FULL_SCALE_DBM) / 10.0)
    signal_fs = np.maximum(mean_power_fs - noise_fs, _NOISE_FLOOR_FRACTION * noise_fs)
    return np.where(heard, 10.0 * np.log10(signal_fs) + FULL_SCALE_DBM, np.nan)


class RssiMultilateration:
    """Grid-search least-squares position from per-receiver power with the transmit power unknown."""

    def __init__(self, contract: Contract, coarse_m: float = 2_000.0, fine_m: float = 200.0) -> None:
        self.rx = station_enu(contract)
        low, high = coverage_area(contract)
        east, north = (np.arange(lo, hi + coarse_m, coarse_m) for lo, hi in zip(low, high, strict=True))
        self.grid = np.stack(np.meshgrid(east, north), axis=-1).reshape(-1, 2)
        half = np.arange(-coarse_m, coarse_m + fine_m, fine_m)
        self.fine_offsets = np.stack(np.meshgrid(half, half), axis=-1).reshape(-1, 2)

    def _loss(self, points: np.ndarray) -> np.ndarray:
        """(..., receivers) path loss from grid points (..., 2) to each station, dB."""
        return path_loss_db(np.linalg.norm(points[..., None, :] - self.rx, axis=-1))

    @staticmethod
    def _sse(power: np.ndarray, w: np.ndarray, loss: np.ndarray) -> np.ndarray:
        """Residual sum of squares after fitting A: scenes (N, R) against candidates (G, R) or (N, G, R)."""

        def dot(a, b):  # sum over receivers, broadcasting the candidate axis
            return np.einsum("nr,gr->ng", a, b) if b.ndim == 2 else np.einsum("nr,ngr->ng", a, b)

        n_heard = w.sum(axis=1, keepdims=True)
        s1 = (w * power).sum(axis=1, keepdims=True) + dot(w, loss)
        s2 = (w * power**2).sum(axis=1, keepdims=True) + 2 * dot(w * power, loss) + dot(w, loss**2)
        return s2 - s1**2 / n_heard

    def locate(self, power_dbm: np.ndarray, chunk: int = 256) -> np.ndarray:
        """(N, receivers) dBm, NaN where not heard -> (N, 2) east, north in metres."""
        w = np.isfinite(power_dbm).astype(np.float64)
        power = np.nan_to_num(power_dbm)
        coarse_loss = self._loss(self.grid)
        out = np.empty((len(power), 2))
        for start in range(0, len(power), chunk):
            p, ww = power[start : start + chunk], w[start : start + chunk]
            best = self.grid[self._sse(p, ww, coarse_loss).argmin(axis=1)]
            candidates = best[:, None, :] + self.fine_offsets  # (n, G_fine, 2)
            pick = self._sse(p, ww, self._loss(candidates)).argmin(axis=1)
            out[start : start + chunk] = candidates[np.arange(len(p)), pick]
        return out
