"""The grid oracle: it finds a transmitter from clean power, and beats the baseline on simulated scenes."""

from __future__ import annotations

import numpy as np
import pytest

from heimdall.contract.document import Contract
from heimdall.training.baseline import RssiMultilateration, received_power_dbm
from heimdall.training.oracle import GridOracle, measurement_error
from heimdall.training.physics import NOMINAL, Physics
from heimdall.training.simulate import coverage_area, path_loss_db, simulate_scenes, station_enu

CONTRACT = Contract()


def test_measurement_error_is_a_few_db():
    spread, (low, high) = measurement_error(CONTRACT)
    assert 0.5 < spread < 4.0, "Rician fading averaged over a 0.33 s capture"
    assert low < 0 < high + 1.0 and high - low < 10.0


def test_recovers_a_transmitter_from_power_without_shadowing():
    physics = Physics(shadowing_db=(0.5, 0.5))
    rng = np.random.default_rng(4)
    low, high = coverage_area(CONTRACT)
    tx = rng.uniform(low + 20e3, high - 20e3, (20, 2))
    distance = np.linalg.norm(tx[:, None] - station_enu(CONTRACT)[None], axis=-1)
    power = 40.0 - path_loss_db(distance)  # 10 W, the nominal law, no noise
    found = GridOracle(CONTRACT, physics).locate(power)
    # The oracle still allows for the capture's fading (~1.5 dB): a few km, against ~30 km with shadowing.
    assert np.median(np.linalg.norm(found - tx, axis=1)) < 8_000.0


@pytest.mark.parametrize("physics", [NOMINAL, Physics(tx_power_w=(50.0, 100.0))], ids=["nominal", "50-100 W"])
def test_beats_the_baseline_on_simulated_scenes(physics):
    scenes = simulate_scenes(300, seed=12, contract=CONTRACT, samples=1024, physics=physics)
    truth = np.stack([scenes.tx_east_m, scenes.tx_north_m], axis=1)
    power = received_power_dbm(scenes.iq, scenes.heard, CONTRACT.features.sample_rate_hz)
    oracle = np.linalg.norm(GridOracle(CONTRACT, physics).locate(power) - truth, axis=1)
    baseline = np.linalg.norm(RssiMultilateration(CONTRACT).locate(power) - truth, axis=1)
    assert np.median(oracle) < np.median(baseline)
    assert np.percentile(oracle, 95) < np.percentile(baseline, 95)


def test_posterior_moments_are_a_valid_gaussian():
    scenes = simulate_scenes(40, seed=5, contract=CONTRACT, samples=1024)
    power = received_power_dbm(scenes.iq, scenes.heard, CONTRACT.features.sample_rate_hz)
    oracle = GridOracle(CONTRACT, NOMINAL)
    mean, cov = oracle.posterior(power)
    np.testing.assert_array_equal(mean, oracle.locate(power))
    np.testing.assert_allclose(cov, cov.transpose(0, 2, 1))
    assert (np.linalg.eigvalsh(cov) > 1_000.0**2).all(), "at least a km wide: the grid is 2 km"
