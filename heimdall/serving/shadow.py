"""How far two models' answers to one capture set disagree (shadow mode's metrics)."""

from __future__ import annotations

import math
from typing import NamedTuple

from heimdall.contract import geo
from heimdall.contract.document import Contract
from heimdall.serving.inference import ModelOutput


class Disagreement(NamedTuple):
    distance_km: float
    # Smallest confidence level whose ellipse holds the other model's position: 1 - exp(-m^2 / 2)
    # for the Mahalanobis distance m (the 2-D chi-square CDF), so 0.95 sits on the 95 % ellipse.
    candidate_in_primary: float
    primary_in_candidate: float


def _level(de: float, dn: float, out: ModelOutput) -> float:
    """The ellipse level of offset (de, dn) metres under `out`'s covariance."""
    se, sn, rho = out.sigma_east_m, out.sigma_north_m, out.rho
    m2 = ((de / se) ** 2 - 2 * rho * (de / se) * (dn / sn) + (dn / sn) ** 2) / (1 - rho**2)
    return -math.expm1(-m2 / 2)


def disagreement(
    primary: ModelOutput, primary_contract: Contract, candidate: ModelOutput, candidate_contract: Contract
) -> Disagreement:
    """Both positions in the primary's local frame (the candidate's may have another reference point)."""
    east, north = candidate.east_m, candidate.north_m
    if candidate_contract.reference != primary_contract.reference:
        c_ref, p_ref = candidate_contract.reference, primary_contract.reference
        lat, lon = geo.enu_to_geodetic(east, north, c_ref.lat, c_ref.lon)
        east, north = (float(v) for v in geo.geodetic_to_enu(lat, lon, p_ref.lat, p_ref.lon))
    de, dn = east - primary.east_m, north - primary.north_m
    return Disagreement(math.hypot(de, dn) / 1e3, _level(de, dn, primary), _level(-de, -dn, candidate))
