"""Coordinates and uncertainty geometry.

The model works in a local east/north tangent plane (metres) at the contract's
reference point. This module converts that frame to WGS84 and turns a 2-D
Gaussian (sigma east, sigma north, correlation) into an ellipse, a GeoJSON
polygon and a confidence figure.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

# WGS84 ellipsoid.
_A = 6_378_137.0
_F = 1 / 298.257223563
_E2 = _F * (2 - _F)
_B2 = _A**2 * (1 - _E2)  # the semi-minor axis, squared


def _prime_vertical_radius(lat_rad: np.ndarray | float) -> np.ndarray | float:
    return _A / np.sqrt(1 - _E2 * np.sin(lat_rad) ** 2)


def _geodetic_to_ecef(lat_deg, lon_deg, h_m=0.0):
    lat, lon = np.radians(lat_deg), np.radians(lon_deg)
    n = _prime_vertical_radius(lat)
    x = (n + h_m) * np.cos(lat) * np.cos(lon)
    y = (n + h_m) * np.cos(lat) * np.sin(lon)
    z = (n * (1 - _E2) + h_m) * np.sin(lat)
    return x, y, z


def geodetic_to_enu(lat_deg, lon_deg, ref_lat_deg: float, ref_lon_deg: float):
    """East and north (metres) of points on the ellipsoid, in the tangent plane at the reference."""
    x, y, z = _geodetic_to_ecef(lat_deg, lon_deg)
    x0, y0, z0, sl, cl, so, co = _tangent_frame(ref_lat_deg, ref_lon_deg)
    dx, dy, dz = x - x0, y - y0, z - z0
    return -so * dx + co * dy, -sl * co * dx - sl * so * dy + cl * dz


def enu_to_geodetic(east_m, north_m, ref_lat_deg: float, ref_lon_deg: float):
    """Latitude and longitude (degrees) of the ellipsoid point whose tangent-plane east/north is given.

    The inverse of `geodetic_to_enu`, in closed form. The point P(u) = P0 + u * up, with
    P0 the tangent-plane point, lies on the ellipsoid (x^2 + y^2) / a^2 + z^2 / b^2 = 1
    where a quadratic in u is zero; its root nearest the plane is taken. On the ellipsoid
    the geodetic latitude satisfies tan(lat) = z / ((1 - e^2) * sqrt(x^2 + y^2)).
    Scalars stay Python floats, so one position costs a few microseconds.
    """
    x0, y0, z0, sl, cl, so, co = _tangent_frame(ref_lat_deg, ref_lon_deg)
    x = x0 - so * east_m - sl * co * north_m
    y = y0 + co * east_m - sl * so * north_m
    z = z0 + cl * north_m
    ux, uy, uz = cl * co, cl * so, sl  # the reference's up, a unit vector
    quad = (ux * ux + uy * uy) / _A**2 + uz * uz / _B2
    half_lin = (x * ux + y * uy) / _A**2 + z * uz / _B2
    const = (x * x + y * y) / _A**2 + z * z / _B2 - 1.0
    # -const / (half_lin + sqrt(...)): the small root without cancellation
    up = -const / (half_lin + np.sqrt(half_lin * half_lin - quad * const))
    x, y, z = x + up * ux, y + up * uy, z + up * uz
    lat = np.degrees(np.arctan2(z, (1 - _E2) * np.hypot(x, y)))
    return lat, np.degrees(np.arctan2(y, x))


@functools.cache
def _tangent_frame(ref_lat_deg: float, ref_lon_deg: float) -> tuple[float, ...]:
    """The reference point in ECEF and the sines and cosines of its latitude and longitude."""
    lat0, lon0 = math.radians(ref_lat_deg), math.radians(ref_lon_deg)
    x0, y0, z0 = (float(v) for v in _geodetic_to_ecef(ref_lat_deg, ref_lon_deg))
    return x0, y0, z0, math.sin(lat0), math.cos(lat0), math.sin(lon0), math.cos(lon0)


def metres_per_degree(lat_deg: float) -> tuple[float, float]:
    """Metres per degree of latitude and of longitude at a latitude (WGS84 radii of curvature)."""
    lat = math.radians(lat_deg)
    s2 = math.sin(lat) ** 2
    meridional = _A * (1 - _E2) / (1 - _E2 * s2) ** 1.5
    prime_vertical = _A / math.sqrt(1 - _E2 * s2)
    return math.radians(1) * meridional, math.radians(1) * prime_vertical * math.cos(lat)


def chi2_2d_scale(level: float) -> float:
    """Mahalanobis radius holding `level` of a 2-D Gaussian: sqrt(-2 ln(1 - level))."""
    return math.sqrt(-2.0 * math.log1p(-level))


def principal_axes(sigma_east_m: float, sigma_north_m: float, rho: float) -> tuple[float, float, float]:
    """The covariance's eigenvalues and major-axis direction, in closed form (a 2x2 symmetric matrix).

    Returns (major variance, minor variance, bearing of the major axis in degrees
    clockwise from north, in [0, 180)). A circle has no major axis; it reads 90.
    """
    var_e, var_n, cov = sigma_east_m**2, sigma_north_m**2, rho * sigma_east_m * sigma_north_m
    mean, radius = (var_e + var_n) / 2, math.hypot((var_e - var_n) / 2, cov)
    from_east = 0.5 * math.atan2(2 * cov, var_e - var_n)  # counter-clockwise from east
    return mean + radius, max(mean - radius, 0.0), math.degrees(math.pi / 2 - from_east) % 180.0


@dataclass(frozen=True)
class Ellipse:
    """An uncertainty ellipse in the local frame.

    Semi-axes in metres; `bearing_deg` is the direction of the major axis,
    clockwise from true north, in [0, 180).
    """

    semi_major_m: float
    semi_minor_m: float
    bearing_deg: float
    level: float

    @property
    def area_km2(self) -> float:
        return math.pi * self.semi_major_m * self.semi_minor_m / 1e6


def ellipse(sigma_east_m: float, sigma_north_m: float, rho: float, level: float) -> Ellipse:
    """The `level` confidence ellipse of N(0, Σ) from its standard deviations and correlation."""
    major, minor, bearing = principal_axes(sigma_east_m, sigma_north_m, rho)
    k = chi2_2d_scale(level)
    return Ellipse(
        semi_major_m=k * math.sqrt(major), semi_minor_m=k * math.sqrt(minor), bearing_deg=bearing, level=level
    )


@functools.cache
def _unit_circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of n equally spaced angles, computed once per n."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.cos(t), np.sin(t)


def ellipse_polygon(lat_deg: float, lon_deg: float, e: Ellipse, n_vertices: int = 72) -> dict:
    """A closed GeoJSON Polygon ([lon, lat] order) tracing the ellipse around a position."""
    cos_t, sin_t = _unit_circle(n_vertices)
    b = math.radians(e.bearing_deg)
    # Unit vectors of the major and minor axes in (east, north).
    major = np.array([math.sin(b), math.cos(b)])
    minor = np.array([math.cos(b), -math.sin(b)])
    pts = np.outer(e.semi_major_m * cos_t, major) + np.outer(e.semi_minor_m * sin_t, minor)
    m_lat, m_lon = metres_per_degree(lat_deg)
    ring = np.column_stack([lon_deg + pts[:, 0] / m_lon, lat_deg + pts[:, 1] / m_lat]).tolist()
    ring.append(ring[0])
    return {"type": "Polygon", "coordinates": [ring]}


def probability_within(radius_m: float, sigma_east_m: float, sigma_north_m: float, rho: float) -> float:
    """P(|X| <= radius) for X ~ N(0, Σ): the chance the transmitter is within `radius_m` of the estimate.

    In polar coordinates the radial integral has a closed form, leaving a smooth
    periodic integral over the angle that the trapezoid rule gets to machine
    precision with a few hundred nodes.
    """
    major, minor, _ = principal_axes(sigma_east_m, sigma_north_m, rho)
    major, minor = max(major, 1e-12), max(minor, 1e-12)
    cos_t, sin_t = _unit_circle(512)
    q = cos_t**2 / minor + sin_t**2 / major
    integrand = -np.expm1(-0.5 * radius_m**2 * q) / q
    return min(max(float(integrand.mean()) / math.sqrt(major * minor), 0.0), 1.0)
