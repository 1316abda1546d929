"""The scene simulator: deterministic, the WebSDR format, and the physics it claims."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from heimdall.contract.document import Contract
from heimdall.training.baseline import received_power_dbm
from heimdall.training.simulate import (
    MIN_STATION_DISTANCE_M,
    PATH_LOSS_EXPONENT,
    Scenes,
    coverage_area,
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
