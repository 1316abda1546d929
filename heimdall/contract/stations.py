"""The public WebSDR/OpenWebRX receivers in north-west Italy (design.md).

Coordinates are the published station locations: latitude and longitude in
degrees (WGS84), altitude in metres above sea level.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Station(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    lat: float
    lon: float
    alt_m: float
    gain_offset_db: float = Field(
        0.0,
        allow_inf_nan=False,
        description="measured calibration error, dB: how much stronger than the calibrated gain this "
        "station reports a signal; the feature extractor subtracts it (contract version 2)",
    )


STATIONS: tuple[Station, ...] = (
    Station(id="giaveno", name="Aquila di Giaveno", lat=45.02, lon=7.29, alt_m=600),
    Station(id="montanaro", name="Montanaro", lat=45.234, lon=7.857, alt_m=300),
    Station(id="torino", name="Torino", lat=45.044, lon=7.672, alt_m=250),
    Station(id="coazze", name="Coazze", lat=45.03, lon=7.27, alt_m=700),
    Station(id="passo-del-giovi", name="Passo del Giovi", lat=44.561, lon=8.956, alt_m=480),
    Station(id="genova", name="Genova", lat=44.395, lon=8.956, alt_m=100),
    Station(id="milano-baggio", name="Milano-Baggio", lat=45.478, lon=9.123, alt_m=120),
)

# Local metric frame origin: roughly the centroid of the seven stations.
REFERENCE_LAT = 44.95
REFERENCE_LON = 8.15
