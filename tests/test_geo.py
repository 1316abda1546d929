"""Ellipse and coordinate math on known covariances."""

import math

import numpy as np
import pytest

from heimdall.contract import geo


def test_chi2_scale_is_exact_for_two_dimensions():
    assert geo.chi2_2d_scale(0.95) == pytest.approx(math.sqrt(-2 * math.log(0.05)))
    assert geo.chi2_2d_scale(0.95) == pytest.approx(2.447746830680816)
    assert geo.chi2_2d_scale(0.5) == pytest.approx(1.1774100225154747)
    # 1 - exp(-k^2 / 2) recovers the level
    for p in (0.1, 0.39346934, 0.9, 0.99):
        assert 1 - math.exp(-(geo.chi2_2d_scale(p) ** 2) / 2) == pytest.approx(p)


def test_circle_has_equal_axes_and_area():
    e = geo.ellipse(1000.0, 1000.0, 0.0, 0.95)
    k = geo.chi2_2d_scale(0.95)
    assert e.semi_major_m == pytest.approx(1000 * k)
    assert e.semi_minor_m == pytest.approx(1000 * k)
    assert e.area_km2 == pytest.approx(math.pi * (1000 * k) ** 2 / 1e6)


@pytest.mark.parametrize(
    ("sigma_e", "sigma_n", "bearing"),
    [(3000.0, 1000.0, 90.0), (1000.0, 3000.0, 0.0)],
)
def test_axis_aligned_orientation(sigma_e, sigma_n, bearing):
    e = geo.ellipse(sigma_e, sigma_n, 0.0, 0.5)
    assert e.bearing_deg % 180 == pytest.approx(bearing, abs=1e-9)
    assert e.semi_major_m == pytest.approx(3000 * geo.chi2_2d_scale(0.5))
    assert e.semi_minor_m == pytest.approx(1000 * geo.chi2_2d_scale(0.5))


def test_rotated_ellipse_matches_constructed_covariance():
    # Major axis 4 km along bearing 30 deg (north-east-ish), minor 1 km.
    b = math.radians(30)
    major = np.array([math.sin(b), math.cos(b)])
    minor = np.array([math.cos(b), -math.sin(b)])
    cov = 4000.0**2 * np.outer(major, major) + 1000.0**2 * np.outer(minor, minor)
    se, sn = math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])
    rho = cov[0, 1] / (se * sn)
    e = geo.ellipse(se, sn, rho, 0.95)
    assert e.bearing_deg == pytest.approx(30.0)
    assert e.semi_major_m == pytest.approx(4000 * geo.chi2_2d_scale(0.95))
    assert e.semi_minor_m == pytest.approx(1000 * geo.chi2_2d_scale(0.95))
    # negative correlation mirrors the bearing about north
    assert geo.ellipse(se, sn, -rho, 0.95).bearing_deg == pytest.approx(150.0)


def test_closed_form_axes_match_numpy_eigh():
    rng = np.random.default_rng(3)
    sigmas, rhos = rng.uniform(10, 1e5, (200, 2)), rng.uniform(-0.99, 0.99, 200)
    for (se, sn), rho in zip(sigmas, rhos, strict=True):
        off = rho * se * sn
        values, vectors = np.linalg.eigh(np.array([[se**2, off], [off, sn**2]]))
        major, minor, bearing = geo.principal_axes(se, sn, rho)
        assert (major, minor) == pytest.approx((values[1], values[0]), rel=1e-9, abs=1e-6 * values[1])
        # the major axis, as a bearing, is eigh's major eigenvector up to sign
        east, north = math.sin(math.radians(bearing)), math.cos(math.radians(bearing))
        assert abs(east * vectors[0, 1] + north * vectors[1, 1]) == pytest.approx(1.0, abs=1e-9)
        assert 0.0 <= bearing < 180.0


def test_polygon_is_closed_lon_lat_ring_with_correct_scale():
    lat, lon = 45.0, 8.0
    e = geo.ellipse(2000.0, 1000.0, 0.0, 0.95)  # major axis east-west
    poly = geo.ellipse_polygon(lat, lon, e, n_vertices=8)
    ring = poly["coordinates"][0]
    assert poly["type"] == "Polygon"
    assert ring[0] == ring[-1] and len(ring) == 9
    m_lat, m_lon = geo.metres_per_degree(lat)
    # WGS84 at 45 deg: ~111 132 m per degree of latitude, ~78 847 m per degree of longitude.
    assert m_lat == pytest.approx(111_132, rel=1e-3)
    assert m_lon == pytest.approx(78_847, rel=1e-3)
    lons, lats = np.array(ring)[:, 0], np.array(ring)[:, 1]
    assert (lons.max() - lon) * m_lon == pytest.approx(e.semi_major_m, rel=1e-9)
    assert (lats.max() - lat) * m_lat == pytest.approx(e.semi_minor_m, rel=1e-9)
    assert all(-180 <= x <= 180 and -90 <= y <= 90 for x, y in ring)


def test_enu_round_trip_and_known_offsets():
    lat, lon = geo.enu_to_geodetic(0.0, 0.0, 45.0, 8.0)
    assert (float(lat), float(lon)) == pytest.approx((45.0, 8.0), abs=1e-12)
    east, north = geo.geodetic_to_enu(45.5, 9.0, 45.0, 8.0)
    back_lat, back_lon = geo.enu_to_geodetic(east, north, 45.0, 8.0)
    assert float(back_lat) == pytest.approx(45.5, abs=1e-7)
    assert float(back_lon) == pytest.approx(9.0, abs=1e-7)
    # 10 km due north is 10 km / (metres per degree of latitude)
    lat_n, lon_n = geo.enu_to_geodetic(0.0, 10_000.0, 45.0, 8.0)
    assert float(lon_n) == pytest.approx(8.0, abs=1e-9)
    assert (float(lat_n) - 45.0) * geo.metres_per_degree(45.0)[0] == pytest.approx(10_000, rel=2e-3)


def test_probability_within_radius():
    # circle: closed form 1 - exp(-r^2 / (2 sigma^2))
    assert geo.probability_within(1000.0, 1000.0, 1000.0, 0.0) == pytest.approx(1 - math.exp(-0.5))
    # an elongated ellipse holds less mass in the same circle than a circle of its minor sigma
    p = geo.probability_within(2000.0, 1000.0, 5000.0, 0.3)
    assert 0.0 < p < 1 - math.exp(-2.0)
    # Monte Carlo check of the general case
    rng = np.random.default_rng(0)
    off = 0.6 * 3000.0 * 1500.0
    cov = np.array([[3000.0**2, off], [off, 1500.0**2]])
    pts = rng.multivariate_normal([0, 0], cov, size=400_000)
    mc = (np.hypot(pts[:, 0], pts[:, 1]) <= 2500.0).mean()
    assert geo.probability_within(2500.0, 3000.0, 1500.0, 0.6) == pytest.approx(mc, abs=3e-3)
