"""Bayesian grid oracle: the position posterior from received power under the simulator's own physics.

What the evaluation compares against: the error any method that reads only
per-receiver power can hope for, when it knows the physics the scenes were
drawn from (a `Physics`) but not the scene's hidden values. On a grid over the
coverage area (stations' 3 km exclusion discs removed, as the simulator places
transmitters), with measured power P_r (dBm, `baseline.received_power_dbm`):

    P_r = A - L0 - 10 n log10(d_r / 1 km) + e_r,   e_r ~ N(0, v),
    v = sigma_shadow^2 + sigma_receiver_gain^2 + sigma_capture_gain^2 + sigma_measurement^2

A (the transmit power as the receivers see it) is uniform over the physics'
power range, widened by the emission's own spread (a keyed carrier's duty
cycle); it is integrated out in closed form. The path-loss exponent n and the
shadowing sigma are integrated over their ranges on a few points each. The
estimate is the posterior mean. sigma_measurement (fading and noise in a
0.33 s capture) and the emission spread are measured on the simulator's own
scenes (ORACLE_SEED), on links well above the noise.

Approximations, which is why it is "near" optimal: the per-receiver gain
error is treated as independent per scene (a single scene cannot learn it),
the measurement error as Gaussian in dB, and signals far below the noise at
the baseline's floor value. The grid is 2 km, far finer than the errors.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import log_ndtr, logsumexp

from heimdall.contract.document import Contract
from heimdall.training.baseline import received_power_dbm
from heimdall.training.physics import NOMINAL, Physics
from heimdall.training.simulate import (
    D0_M,
    MIN_STATION_DISTANCE_M,
    coverage_area,
    path_loss_db,
    simulate_scenes,
    station_enu,
    thermal_noise_dbm,
)

NAME = "Bayesian grid oracle: received power, the scenes' physics known, 2 km grid"
ORACLE_SEED = 31_337
_HIGH_SNR_DB = 15.0  # links this far above the noise measure the fading, not the noise
_POINTS = 5  # points per integrated range (exponent, shadowing sigma)


def measurement_error(contract: Contract, scenes: int = 400) -> tuple[float, tuple[float, float]]:
    """Measured minus true local-mean power on simulated links, dB: the per-link standard deviation
    within a scene, and the 1st-99th percentile range of the part common to a scene's links."""
    sim = simulate_scenes(scenes, ORACLE_SEED, contract, physics=NOMINAL)
    measured = received_power_dbm(sim.iq, sim.heard, contract.features.sample_rate_hz)
    error = measured - sim.rx_power_dbm
    strong = sim.heard & (
        sim.rx_power_dbm > thermal_noise_dbm(contract.features.sample_rate_hz) + _HIGH_SNR_DB
    )
    error = np.where(strong, error, np.nan)
    count = strong.sum(axis=1)
    usable = count >= 2
    common = np.nanmean(error[usable], axis=1)
    deviation = error[usable] - common[:, None]
    within = np.nansum(deviation**2) / (count[usable] - 1).sum()
    low, high = np.percentile(common, [1, 99])
    return math.sqrt(within), (float(low), float(high))


def _points(low: float, high: float) -> np.ndarray:
    """Midpoints of `_POINTS` equal slices of [low, high]; the value itself for a fixed one."""
    if low == high:
        return np.array([low])
    return low + (np.arange(_POINTS) + 0.5) * (high - low) / _POINTS


class GridOracle:
    """Posterior-mean position from per-receiver power (N, receivers) dBm, NaN where not heard."""

    def __init__(self, contract: Contract, physics: Physics, step_m: float = 2_000.0) -> None:
        rx = station_enu(contract)
        low, high = coverage_area(contract)
        east, north = (np.arange(lo, hi + step_m / 2, step_m) for lo, hi in zip(low, high, strict=True))
        grid = np.stack(np.meshgrid(east, north), axis=-1).reshape(-1, 2)
        distance = np.linalg.norm(grid[:, None] - rx[None], axis=-1)
        keep = distance.min(axis=1) >= MIN_STATION_DISTANCE_M
        self.grid = grid[keep]
        self.log_d = np.log10(distance[keep] / D0_M)  # (G, receivers)
        self.l0 = float(path_loss_db(np.array(D0_M)))
        sigma_m, (c_low, c_high) = measurement_error(contract)
        tx_dbm = 30.0 + 10.0 * np.log10(physics.tx_power_w)
        self.a_low, self.a_high = tx_dbm[0] + c_low, tx_dbm[1] + c_high
        self.exponents = _points(*physics.path_loss_exponent)
        fixed = physics.receiver_gain_sigma_db**2 + physics.capture_gain_sigma_db**2 + sigma_m**2
        self.variances = _points(*physics.shadowing_db) ** 2 + fixed

    def locate(self, power_dbm: np.ndarray) -> np.ndarray:
        """(N, receivers) dBm -> (N, 2) posterior-mean east, north, metres."""
        return self.posterior(power_dbm)[0]

    def posterior(self, power_dbm: np.ndarray, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(N, receivers) dBm -> the posterior's mean (N, 2) and covariance (N, 2, 2), metres."""
        mean, cov = np.empty((len(power_dbm), 2)), np.empty((len(power_dbm), 2, 2))
        second = (self.grid[:, :, None] * self.grid[:, None, :]).reshape(-1, 4)  # (G, 4)
        for start in range(0, len(power_dbm), chunk):
            part = power_dbm[start : start + chunk]
            log_post = self._log_posterior(np.isfinite(part).astype(np.float64), np.nan_to_num(part))
            weights = np.exp(log_post - logsumexp(log_post, axis=1, keepdims=True))
            m = weights @ self.grid
            mean[start : start + chunk] = m
            cov[start : start + chunk] = (weights @ second).reshape(-1, 2, 2) - m[:, :, None] * m[:, None, :]
        return mean, cov

    def _log_posterior(self, w: np.ndarray, power: np.ndarray) -> np.ndarray:
        """(n, G) log posterior over the grid, up to a constant per scene, n and sigma integrated out."""
        k = w.sum(axis=1, keepdims=True)
        p = (power + self.l0) * w  # r_r = P_r + L(d_r) = A + e_r; L = l0 + 10 n log_d
        sp, sp2 = p.sum(axis=1, keepdims=True), (p * (power + self.l0)).sum(axis=1, keepdims=True)
        pl, ll, l2 = p @ self.log_d.T, w @ self.log_d.T, w @ (self.log_d**2).T
        total = np.full(pl.shape, -np.inf)  # log 0: logaddexp(-inf, x) is x
        for n in self.exponents:
            s1 = sp + 10 * n * ll
            sse = sp2 + 20 * n * pl + 100 * n**2 * l2 - s1**2 / k
            mean = s1 / k
            for v in self.variances:
                s = np.sqrt(v / k)
                upper, lower = log_ndtr((self.a_high - mean) / s), log_ndtr((self.a_low - mean) / s)
                mass = upper + np.log1p(-np.exp(np.minimum(lower - upper, -1e-12)))
                term = -0.5 * (k - 1) * np.log(v) - sse / (2 * v) + mass
                total = np.logaddexp(total, term)
        return total
