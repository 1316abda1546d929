"""Model output -> what the map draws: WGS84 position, ellipse, GeoJSON and confidence."""

from __future__ import annotations

from heimdall.contract import geo
from heimdall.contract.document import Contract
from heimdall.serving.inference import ModelOutput


def describe(out: ModelOutput, contract: Contract, level: float, radius_m: float) -> dict:
    """The model-dependent part of a `Prediction`, as a dict of its fields."""
    lat, lon = geo.enu_to_geodetic(out.east_m, out.north_m, contract.reference.lat, contract.reference.lon)
    lat, lon = float(lat), float(lon)
    e = geo.ellipse(out.sigma_east_m, out.sigma_north_m, out.rho, level)
    return {
        "lat": lat,
        "lon": lon,
        "east_m": out.east_m,
        "north_m": out.north_m,
        "uncertainty": {
            "sigma_east_m": out.sigma_east_m,
            "sigma_north_m": out.sigma_north_m,
            "correlation": out.rho,
            "semi_major_m": e.semi_major_m,
            "semi_minor_m": e.semi_minor_m,
            "orientation_deg": e.bearing_deg,
            "confidence_level": level,
            "area_km2": e.area_km2,
        },
        "ellipse": geo.ellipse_polygon(lat, lon, e),
        "confidence": geo.probability_within(radius_m, out.sigma_east_m, out.sigma_north_m, out.rho),
        "confidence_radius_m": radius_m,
    }
