"""Request and response bodies of the public API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, WithJsonSchema

Encoding = Literal["int16", "complex64"]
ConfidenceLevel = Annotated[
    float, Field(gt=0.0, lt=1.0, description="probability mass inside the returned ellipse, 0 < p < 1")
]

_PAIR = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_IQ_SCHEMA = {"anyOf": [{"type": "string", "contentEncoding": "base64"}, {"type": "array", "items": _PAIR}]}


class Capture(BaseModel):
    """One receiver's capture of the transmission."""

    station: str = Field(description="receiver id, one of the model contract's receivers (GET /v1/model)")
    # Validated by the decoder, not by pydantic: it checks nesting, length, range and
    # finiteness and answers with the field, the value and what it expects, and pydantic's
    # union validation of every number would add to a JSON request's largest cost, reading
    # its numbers (`make bench` reports decode costs per form). The schema still documents
    # the two forms.
    iq: Annotated[Any, WithJsonSchema(_IQ_SCHEMA)] = Field(
        description="[[I, Q], ...] int16 ADC counts at the contract's sample rate, or a base64 string "
        "of interleaved little-endian I/Q in the request's `encoding`"
    )


class CaptureSetIn(BaseModel):
    captures: list[Capture]
    encoding: Encoding = Field("int16", description="how base64 `iq` strings are packed")


class Uncertainty(BaseModel):
    sigma_east_m: float
    sigma_north_m: float
    correlation: float
    semi_major_m: float
    semi_minor_m: float
    orientation_deg: float = Field(
        description="bearing of the major axis, degrees clockwise from north, [0, 180)"
    )
    confidence_level: float
    area_km2: float


class Prediction(BaseModel):
    lat: float
    lon: float
    east_m: float = Field(description="metres east of the model's reference point")
    north_m: float = Field(description="metres north of the model's reference point")
    uncertainty: Uncertainty
    ellipse: dict[str, Any] = Field(description="GeoJSON Polygon of the ellipse, [lon, lat] positions")
    confidence: float = Field(
        description="probability, under the predicted Gaussian, that the transmitter lies within "
        "`confidence_radius_m` of (lat, lon)"
    )
    confidence_radius_m: float
    receivers: list[str] = Field(description="receivers the estimate used")
    model_name: str
    model_version: str
    cached: bool
    server_ms: float


class ItemError(BaseModel):
    field: str
    received: str
    expected: str
    reason: str
    message: str


class BatchItem(BaseModel):
    index: int
    prediction: Prediction | None = None
    error: ItemError | None = None


class BatchPrediction(BaseModel):
    items: list[BatchItem]
    succeeded: int
    failed: int
    samples: int = Field(description="IQ samples in the succeeded items")
    server_ms: float
    captures_per_second: float
    samples_per_second: float


class PredictRequest(BaseModel):
    """`POST /predict`."""

    captures: list[Capture]
    encoding: Encoding = Field("int16", description="how base64 `iq` strings are packed")
    confidence_level: ConfidenceLevel = 0.95
    use_cache: bool = True


class BatchRequest(BaseModel):
    """`POST /predict/batch`."""

    items: list[CaptureSetIn]
    confidence_level: ConfidenceLevel = 0.95
    use_cache: bool = True


class InferRequest(BaseModel):
    """`POST /infer`."""

    items: list[CaptureSetIn] = Field(min_length=1)


class ErrorBody(BaseModel):
    """Every refusal, from every layer: 400, 408, 413, 415, 431, 503."""

    error: str = Field(description="one line: `<field>: received <value>; expected <what>`")
    field: str = Field(description="what was refused: `captures[2].station`, `body`, `content-type`, ...")
    received: str
    expected: str
    reason: str = Field(description="a short label, the `reason` of `heimdall_rejected_requests_total`")
