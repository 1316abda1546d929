"""The scene simulator: deterministic, the WebSDR format, and the physics it claims."""

from __future__ import annotations

import hashlib
from dataclasses import fields

import numpy as np
import pytest

from heimdall.contract.document import Contract
from heimdall.training.baseline import received_power_dbm
from heimdall.training.examples import EXAMPLE_SEED
from heimdall.training.physics import NOMINAL, WORLD, Physics
from heimdall.training.simulate import (
    MIN_STATION_DISTANCE_M,
    PATH_LOSS_EXPONENT,
    Scenes,
    coverage_area,
    path_loss_db,
    simulate_scenes,
    station_enu,
    thermal_noise_dbm,
)

CONTRACT = Contract()


@pytest.fixture(scope="module")
def scenes() -> Scenes:
    return simulate_scenes(1500, seed=3, samples=1024)


def test_same_seed_same_scenes_other_seed_other_scenes():
    a, b, c = (simulate_scenes(12, seed=s, samples=512) for s in (7, 7, 8))
    for f in fields(Scenes):
        np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name))
    assert not np.array_equal(a.iq, c.iq)
    assert not np.array_equal(a.tx_east_m, c.tx_east_m)


def test_shapes_and_dtypes(scenes):
    n, r = 1500, len(CONTRACT.receivers)
    assert len(scenes) == n
    assert scenes.iq.shape == (n, r, 2 * 1024) and scenes.iq.dtype == np.int16
    assert scenes.heard.shape == (n, r) and scenes.heard.dtype == bool
    for name in ("tx_lat", "tx_lon", "tx_east_m", "tx_north_m", "tx_power_dbm"):
        assert getattr(scenes, name).shape == (n,) and getattr(scenes, name).dtype == np.float64
    assert list(scenes.receiver_ids) == list(CONTRACT.receiver_ids)
    assert not scenes.iq[~scenes.heard].any(), "a receiver that is down delivers nothing"
    assert scenes.iq[scenes.heard].any(axis=-1).all(), "a receiver that is up delivers signal and noise"


def test_transmitters_inside_the_area_and_away_from_stations(scenes):
    low, high = coverage_area(CONTRACT)
    en = np.stack([scenes.tx_east_m, scenes.tx_north_m], axis=1)
    assert np.all((en >= low) & (en <= high))
    gap = np.linalg.norm(en[:, None] - station_enu(CONTRACT)[None], axis=-1).min(axis=1)
    assert gap.min() >= MIN_STATION_DISTANCE_M
    assert scenes.tx_lat.min() > 44.0 and scenes.tx_lat.max() < 46.0
    assert scenes.tx_lon.min() > 6.5 and scenes.tx_lon.max() < 9.8
    assert (
        10 ** ((scenes.tx_power_dbm.min() - 30) / 10) >= 1.0
        and 10 ** ((scenes.tx_power_dbm.max() - 30) / 10) <= 50.0
    )


def test_received_power_falls_with_distance_at_the_path_loss_slope(scenes):
    en = np.stack([scenes.tx_east_m, scenes.tx_north_m], axis=1)
    distance = np.linalg.norm(en[:, None] - station_enu(CONTRACT)[None], axis=-1)
    measured = received_power_dbm(scenes.iq, scenes.heard, CONTRACT.features.sample_rate_hz)
    # Remove the unknown transmit power, then regress on log distance: -10 n dB per decade.
    h = scenes.heard
    excess = (measured - scenes.tx_power_dbm[:, None])[h]
    slope = np.polyfit(np.log10(distance[h]), excess, 1)[0]
    assert slope == pytest.approx(-10 * PATH_LOSS_EXPONENT, abs=2.0)
    near, mid, far = (
        excess[(distance[h] >= lo) & (distance[h] < hi)].mean()
        for lo, hi in ((3e3, 30e3), (30e3, 90e3), (90e3, 300e3))
    )
    assert near > mid + 10 > far + 20


def test_thermal_noise_floor():
    assert thermal_noise_dbm(12_500.0) == pytest.approx(-127.0, abs=0.05)  # -174 dBm/Hz + 41 dB + 6 dB NF


def test_dropout_keeps_min_receivers(scenes):
    per_scene = scenes.heard.sum(axis=1)
    assert per_scene.min() >= CONTRACT.min_receivers
    assert (per_scene == CONTRACT.min_receivers).any() and (per_scene == len(CONTRACT.receivers)).any()
    assert 0.7 < scenes.heard.mean() < 0.9  # down with probability U(0, 0.4): 0.8 up on average
    assert scenes.heard.mean(axis=0).min() > 0.7, "no receiver is systematically favoured or starved"


def test_save_load_and_capture_set(scenes, tmp_path):
    path = tmp_path / "scenes.npz"
    small = simulate_scenes(5, seed=9, samples=512)
    small.save(path)
    loaded = Scenes.load(path)
    for f in fields(Scenes):
        np.testing.assert_array_equal(getattr(loaded, f.name), getattr(small, f.name))
    for i in range(len(small)):
        captures = loaded.capture_set(i)
        assert list(captures) == [
            rid for rid, up in zip(CONTRACT.receiver_ids, small.heard[i], strict=True) if up
        ]
        for rid, iq in captures.items():
            assert iq.dtype == np.int16 and iq.shape == (1024,)
            np.testing.assert_array_equal(iq, small.iq[i, CONTRACT.receiver_ids.index(rid)])


# blake2b (8 bytes) of the example capture set's 16 scenes as the simulator drew them before its
# parameters became distributions: NOMINAL physics must keep drawing the same numbers in the same
# order, or the example capture set, the README's curl and every nominal figure would change.
NOMINAL_EXAMPLE_DIGEST = "7a2c6947dc90196c"


def test_nominal_physics_draws_the_scenes_it_always_did():
    scenes = simulate_scenes(16, EXAMPLE_SEED)
    assert hashlib.blake2b(scenes.iq.tobytes(), digest_size=8).hexdigest() == NOMINAL_EXAMPLE_DIGEST
    assert not scenes.gain_error_db.any()


def _excess_db(scenes: Scenes) -> tuple[np.ndarray, np.ndarray]:
    """Local-mean power minus transmit power (N, receivers) and log10 distance, for the whole scene set."""
    en = np.stack([scenes.tx_east_m, scenes.tx_north_m], axis=1)
    distance = np.linalg.norm(en[:, None] - station_enu(CONTRACT)[None], axis=-1)
    return scenes.rx_power_dbm - scenes.tx_power_dbm[:, None], np.log10(distance)


def test_world_physics_draws_its_distributions():
    world = simulate_scenes(3000, seed=5, samples=256, physics=WORLD)
    watts = 10 ** ((world.tx_power_dbm - 30) / 10)
    assert watts.min() >= WORLD.tx_power_w[0] and watts.max() <= WORLD.tx_power_w[1]
    assert np.median(watts) == pytest.approx(np.sqrt(np.prod(WORLD.tx_power_w)), rel=0.15)  # log-uniform
    # Residual about the nominal slope: shadowing plus the exponent spread, wider than nominal's 6 dB.
    excess, log_d = _excess_db(world)
    nominal_excess, nominal_log_d = _excess_db(simulate_scenes(3000, seed=5, samples=256))
    spread = np.std(excess + path_loss_db(10**log_d))
    assert np.std(nominal_excess + path_loss_db(10**nominal_log_d)) == pytest.approx(6.0, abs=0.2)
    assert spread > 7.5
    # A fixed error per receiver (one deployment) plus N(0, 1 dB) per capture.
    fixed = world.gain_error_db.mean(axis=0)
    np.testing.assert_allclose(world.gain_error_db.std(axis=0), WORLD.capture_gain_sigma_db, rtol=0.1)
    assert np.abs(fixed).max() > 0.5, "receivers differ"
    other = simulate_scenes(10, seed=6, samples=256, physics=WORLD).gain_error_db.mean(axis=0)
    assert not np.allclose(fixed, other, atol=1.0), "each deployment draws its own calibration"


def test_gain_error_reaches_the_iq():
    physics = Physics(receiver_gain_sigma_db=3.0)
    plain, offset = (simulate_scenes(400, seed=8, samples=1024, physics=p) for p in (NOMINAL, physics))
    np.testing.assert_array_equal(plain.rx_power_dbm, offset.rx_power_dbm)  # same scenes, other gains
    strong = plain.heard & (plain.rx_power_dbm > thermal_noise_dbm(12_500.0) + 20)
    shift = received_power_dbm(offset.iq, offset.heard, 12_500.0) - received_power_dbm(
        plain.iq, plain.heard, 12_500.0
    )
    measured = np.array([np.median(shift[:, r][strong[:, r]]) for r in range(len(CONTRACT.receivers))])
    np.testing.assert_allclose(measured, offset.gain_error_db[0], atol=0.3)


def test_exactly_three_receivers():
    scenes = simulate_scenes(500, seed=9, samples=256, physics=Physics(receivers_heard=3))
    assert (scenes.heard.sum(axis=1) == 3).all()
    assert scenes.heard.mean(axis=0).min() > 0.3, "every receiver is among the three sometimes"
    assert not scenes.iq[~scenes.heard].any()
