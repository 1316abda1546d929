"""RF scene simulator: one 2 m transmission as the WebSDR receivers deliver it, interleaved int16 I/Q.

A scene is a transmitter somewhere in the coverage area and one capture
(`samples` at the contract's 12.5 kHz complex rate; 4096 samples = 0.33 s) of
its emission at each receiver that is up. Powers are dBm, distances metres.

Physical model and its sources:

- Emission at 145 MHz: narrowband FM, 2.5 kHz peak deviation (12.5 kHz channel
  plan), modulated by three audio tones of random level in 300-2700 Hz (the
  voice band), in 70% of scenes; a hand-keyed carrier (bursts of 40-150 ms
  period) in the rest. Tuned off the receiver centre by up to +-2 kHz.
  Transmit power log-uniform (1-50 W, 30-47 dBm, in NOMINAL physics): unknown to the receivers.
- Path loss: free space up to d0 = 1 km (Friis; ITU-R P.525-4:
  L = 32.45 + 20 log10 f_MHz + 20 log10 d_km, 75.7 dB at 1 km), then the
  log-distance model L(d) = L(d0) + 10 n log10(d / d0) with n = 3 nominally (Rappaport,
  "Wireless Communications", 2nd ed., sec. 4.9.1 and table 4.2: n = 2.7-3.5
  for built-up areas; ITU-R P.1546-6 land curves for 100 MHz and low antennas
  fall off at a similar 30-40 dB per decade between 10 and 100 km).
- Shadowing: log-normal, sigma 6 dB nominally, independent per link (Rappaport sec. 4.9.2).
- Receiver calibration error (none nominally): a gain error per receiver and
  capture, dB, added to the received power.
- `heimdall.training.physics` turns shadowing, exponent, power, calibration and
  availability into distributions (WORLD, the training distribution) and says
  where their ranges come from; NOMINAL is the values above.
- Fast fading: Rician, K uniform in 0-10 dB, maximum Doppler 1-15 Hz (a walker
  to a car at 110 km/h at 145 MHz), the Clarke model as a sum of eight
  sinusoids (Rappaport sec. 5.7.1), unit mean power, flat over 12.5 kHz.
- Receivers: local oscillator error uniform within +-1 ppm (+-145 Hz); thermal
  noise kTB at T0 = 290 K over 12.5 kHz plus a 6 dB noise figure = -127.0 dBm.
- Calibrated fixed gain: complex full scale (int16 amplitude 32768) is
  FULL_SCALE_DBM = -40 dBm, so the noise floor sits at -87 dBFS (about 1 LSB rms
  per component); anything stronger than -40 dBm clips at int16 limits.
- Availability: per scene each receiver is down with probability p, p uniform
  in 0-0.4; at least `contract.min_receivers` are kept. A down receiver
  delivers nothing (an all-zero row here, `heard` False).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from heimdall.contract.document import Contract
from heimdall.contract.features import INT16_FULL_SCALE
from heimdall.contract.geo import enu_to_geodetic, geodetic_to_enu
from heimdall.training.physics import NOMINAL, Physics

FREQ_MHZ = 145.0
D0_M = 1_000.0
PATH_LOSS_EXPONENT = NOMINAL.path_loss_exponent[0]
NOISE_FIGURE_DB = 6.0
FULL_SCALE_DBM = -40.0
DEVIATION_HZ = 2_500.0
MAX_OFFSET_HZ = 2_000.0
FM_FRACTION = 0.7
LO_ERROR_HZ = 145.0
RICE_K_DB = (0.0, 10.0)
DOPPLER_HZ = (1.0, 15.0)
MAX_DOWN_PROBABILITY = 0.4
AREA_MARGIN_M = 30_000.0
MIN_STATION_DISTANCE_M = 3_000.0
_SINUSOIDS = 8
_FADING_STEP = 64  # samples between fading grid points (5 ms, far below the 67 ms fastest fade period)
_CHUNK = 32  # scenes generated at once: small arrays stay in cache, ~30 MB


def thermal_noise_dbm(bandwidth_hz: float, noise_figure_db: float = NOISE_FIGURE_DB) -> float:
    """Receiver noise power kT0B + NF, dBm."""
    return 10.0 * math.log10(1.380649e-23 * 290.0 * bandwidth_hz * 1e3) + noise_figure_db


def path_loss_db(distance_m: np.ndarray, exponent: float | np.ndarray = PATH_LOSS_EXPONENT) -> np.ndarray:
    """Median path loss at 145 MHz, dB: free space to 1 km, then `exponent` (broadcast against distance)."""
    d_km = np.maximum(distance_m, 10.0) / 1e3
    free_space = 32.45 + 20.0 * math.log10(FREQ_MHZ) + 20.0 * np.log10(np.minimum(d_km, D0_M / 1e3))
    return free_space + 10.0 * exponent * np.log10(np.maximum(d_km, D0_M / 1e3))


def station_enu(contract: Contract) -> np.ndarray:
    """(receivers, 2) east, north of each station from the contract's reference point, metres."""
    lat = np.array([r.lat for r in contract.receivers])
    lon = np.array([r.lon for r in contract.receivers])
    return np.stack(geodetic_to_enu(lat, lon, contract.reference.lat, contract.reference.lon), axis=-1)


def coverage_area(contract: Contract) -> tuple[np.ndarray, np.ndarray]:
    """South-west and north-east corners (east, north, metres) of the area transmitters are placed in."""
    rx = station_enu(contract)
    return rx.min(axis=0) - AREA_MARGIN_M, rx.max(axis=0) + AREA_MARGIN_M


@dataclass
class Scenes:
    """N simulated scenes: captures as WebSDRs deliver them, and the truth behind them."""

    iq: np.ndarray  # int16 (N, receivers, 2 * samples), interleaved I/Q, zero where not heard
    heard: np.ndarray  # bool (N, receivers)
    tx_lat: np.ndarray  # float64 (N,), degrees
    tx_lon: np.ndarray  # float64 (N,), degrees
    tx_east_m: np.ndarray  # float64 (N,), metres east of the reference point
    tx_north_m: np.ndarray  # float64 (N,), metres north of the reference point
    tx_power_dbm: np.ndarray  # float64 (N,)
    rx_power_dbm: np.ndarray  # float64 (N, receivers): local mean (path loss + shadowing, before fading)
    gain_error_db: np.ndarray  # float64 (N, receivers): calibration error added to rx_power_dbm in the IQ
    receiver_ids: np.ndarray  # str (receivers,), the contract's order

    def __len__(self) -> int:
        return len(self.heard)

    def capture_set(self, i: int) -> dict[str, np.ndarray]:
        """Station id -> int16 interleaved capture, for the receivers that heard scene i."""
        return {str(rid): self.iq[i, r] for r, rid in enumerate(self.receiver_ids) if self.heard[i, r]}

    def save(self, path: Path) -> None:
        np.savez(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> Scenes:
        with np.load(path, allow_pickle=False) as z:
            return cls(**{f.name: z[f.name] for f in fields(cls)})


def simulate_scenes(
    n: int, seed: int, contract: Contract | None = None, samples: int = 4096, physics: Physics = NOMINAL
) -> Scenes:
    """Simulate `n` scenes deterministically from `seed` for the contract's receivers.

    One call is one deployment: its receivers' fixed calibration errors are drawn once.
    """
    contract = contract or Contract()
    rng = np.random.default_rng(seed)
    # The draws NOMINAL physics does not make come from their own stream, so the main one
    # (and with it every nominal scene) is the same whatever `physics` says.
    extra = np.random.default_rng([seed, 1])
    rx = station_enu(contract)
    tx = _place_transmitters(rng, n, contract)
    distance = np.linalg.norm(tx[:, None, :] - rx[None], axis=-1)
    low_w, high_w = np.log(physics.tx_power_w)
    tx_dbm = 30.0 + 10.0 * np.log10(np.exp(rng.uniform(low_w, high_w, n)))
    exponent = extra.uniform(*physics.path_loss_exponent, (n, 1))
    shadowing = extra.uniform(*physics.shadowing_db, (n, 1))
    rx_dbm = (
        tx_dbm[:, None] - path_loss_db(distance, exponent) + rng.normal(0.0, 1.0, distance.shape) * shadowing
    )
    gain_error = extra.normal(0.0, physics.receiver_gain_sigma_db, len(rx)) + extra.normal(
        0.0, physics.capture_gain_sigma_db, distance.shape
    )
    heard = _availability(rng, n, len(rx), contract.min_receivers)
    if physics.receivers_heard is not None:
        heard = _exactly(extra, n, len(rx), physics.receivers_heard)
    iq = np.empty((n, len(rx), 2 * samples), dtype=np.int16)
    for start in range(0, n, _CHUNK):
        part = slice(start, min(start + _CHUNK, n))
        iq[part] = _captures(rng, rx_dbm[part] + gain_error[part], samples, contract.features.sample_rate_hz)
    iq[~heard] = 0
    lat, lon = enu_to_geodetic(tx[:, 0], tx[:, 1], contract.reference.lat, contract.reference.lon)
    return Scenes(
        iq=iq,
        heard=heard,
        tx_lat=lat,
        tx_lon=lon,
        tx_east_m=tx[:, 0],
        tx_north_m=tx[:, 1],
        tx_power_dbm=tx_dbm,
        rx_power_dbm=rx_dbm,
        gain_error_db=gain_error,
        receiver_ids=np.array(contract.receiver_ids),
    )


def _place_transmitters(rng: np.random.Generator, n: int, contract: Contract) -> np.ndarray:
    """(n, 2) uniform in the coverage area, at least MIN_STATION_DISTANCE_M from every station."""
    low, high = coverage_area(contract)
    rx = station_enu(contract)
    out = np.empty((0, 2))
    while len(out) < n:
        cand = rng.uniform(low, high, (2 * (n - len(out)) + 16, 2))
        far = np.linalg.norm(cand[:, None] - rx[None], axis=-1).min(axis=1) >= MIN_STATION_DISTANCE_M
        out = np.concatenate([out, cand[far]])
    return out[:n]


def _availability(rng: np.random.Generator, n: int, receivers: int, keep: int) -> np.ndarray:
    """(n, receivers) bool: each receiver up with probability 1 - p; the `keep` luckiest always up."""
    u = rng.random((n, receivers))
    heard = u >= rng.uniform(0.0, MAX_DOWN_PROBABILITY, (n, 1))
    luckiest = np.argsort(-u, axis=1)[:, :keep]
    np.put_along_axis(heard, luckiest, True, axis=1)
    return heard


def _exactly(rng: np.random.Generator, n: int, receivers: int, keep: int) -> np.ndarray:
    """(n, receivers) bool: `keep` receivers heard per scene, chosen uniformly."""
    chosen = np.argsort(rng.random((n, receivers)), axis=1)[:, :keep]
    heard = np.zeros((n, receivers), dtype=bool)
    np.put_along_axis(heard, chosen, True, axis=1)
    return heard


def _emission(rng: np.random.Generator, m: int, t: np.ndarray) -> np.ndarray:
    """(m, samples) complex64 unit-power baseband emission (key-down power 1)."""
    offset = rng.uniform(-MAX_OFFSET_HZ, MAX_OFFSET_HZ, (m, 1))
    tone_hz = rng.uniform(300.0, 2_700.0, (m, 1, 3))
    level = rng.uniform(0.2, 1.0, (m, 1, 3))
    level /= level.sum(axis=-1, keepdims=True)  # peak |message| <= 1 -> peak deviation <= DEVIATION_HZ
    tone_phase = rng.uniform(0.0, 2 * np.pi, (m, 1, 3))
    # Phase of FM = 2 pi dev * integral of sum(level * sin(2 pi f t + phase)) dt, in closed form.
    integral = (
        level
        / (2 * np.pi * tone_hz)
        * (np.cos(tone_phase) - np.cos(2 * np.pi * tone_hz * t[:, None] + tone_phase))
    ).sum(axis=-1)
    is_fm = rng.random((m, 1)) < FM_FRACTION
    phase = 2 * np.pi * (offset * t + np.where(is_fm, DEVIATION_HZ * integral, 0.0))
    period_s = rng.uniform(0.04, 0.15, (m, 1))
    keyed = (t / period_s + rng.random((m, 1))) % 1.0 < rng.uniform(0.4, 0.9, (m, 1))
    return _cis(phase) * np.where(is_fm | keyed, np.float32(1.0), np.float32(0.0))


def _fading(rng: np.random.Generator, m: int, receivers: int, samples: int, fs: float) -> np.ndarray:
    """(m, receivers, samples) complex64 Rician channel gain, unit mean power."""
    grid_t = np.arange(samples // _FADING_STEP + 2) * (_FADING_STEP / fs)
    shape = (m, receivers, 1)
    k = 10.0 ** (rng.uniform(*RICE_K_DB, shape) / 10.0)
    doppler = rng.uniform(*DOPPLER_HZ, shape)
    arrival = rng.uniform(0.0, 2 * np.pi, (*shape, _SINUSOIDS + 1))
    ray_phase = rng.uniform(0.0, 2 * np.pi, (*shape, _SINUSOIDS + 1))
    rays = np.exp(1j * (2 * np.pi * doppler[..., None] * np.cos(arrival) * grid_t[:, None] + ray_phase))
    g = np.sqrt(k / (k + 1)) * rays[..., 0] + np.sqrt(1 / (k + 1)) * rays[..., 1:].sum(-1) / math.sqrt(
        _SINUSOIDS
    )
    pos = np.arange(samples) / _FADING_STEP
    i = pos.astype(np.int64)
    w = (pos - i).astype(np.float32)
    g = g.astype(np.complex64)
    return g[..., i] * (1 - w) + g[..., i + 1] * w


def _cis(phase: np.ndarray) -> np.ndarray:
    """exp(1j * phase) as complex64; float32 cos/sin are SIMD and ~30x faster than complex exp."""
    wrapped = (phase % (2 * np.pi)).astype(np.float32)
    out = np.empty(phase.shape, dtype=np.complex64)
    np.cos(wrapped, out=out.real)
    np.sin(wrapped, out=out.imag)
    return out


def _captures(rng: np.random.Generator, rx_dbm: np.ndarray, samples: int, fs: float) -> np.ndarray:
    """(m, receivers, 2 * samples) int16 interleaved I/Q of one emission at every receiver."""
    m, receivers = rx_dbm.shape
    t = np.arange(samples) / fs
    emission = _emission(rng, m, t)
    lo_hz = rng.uniform(-LO_ERROR_HZ, LO_ERROR_HZ, (m, receivers, 1))
    lo_phase = 2 * np.pi * lo_hz * t + rng.uniform(0.0, 2 * np.pi, (m, receivers, 1))
    amplitude = INT16_FULL_SCALE * 10.0 ** ((rx_dbm - FULL_SCALE_DBM) / 20.0)
    y = _cis(lo_phase)
    y *= amplitude[..., None].astype(np.float32)
    y *= _fading(rng, m, receivers, samples, fs)
    y *= emission[:, None, :]
    noise_rms = INT16_FULL_SCALE * 10.0 ** ((thermal_noise_dbm(fs) - FULL_SCALE_DBM) / 20.0) / math.sqrt(2)
    x = y.view(np.float32)  # complex64 viewed as float32 is already interleaved I, Q
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(noise_rms)
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)
