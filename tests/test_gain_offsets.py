"""Per-station gain offsets (contract version 2): a declared offset cancels the same gain error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from heimdall.contract.document import Contract
from heimdall.contract.features import INT16_FULL_SCALE, FeatureExtractor
from heimdall.training.evaluate import open_session, predict
from heimdall.training.simulate import simulate_scenes

REFERENCE = Path(__file__).resolve().parents[1] / "heimdall" / "reference"
ERROR_DB = 3.0
STATION = "torino"


@pytest.fixture(scope="module")
def reference() -> Contract:
    return Contract.load(REFERENCE / "contract.json")


def declared(contract: Contract, offsets_db: dict[str, float]) -> Contract:
    receivers = tuple(
        r.model_copy(update={"gain_offset_db": offsets_db.get(r.id, 0.0)}) for r in contract.receivers
    )
    return Contract.model_validate(
        {**contract.model_dump(), "contract_version": 2, "receivers": [r.model_dump() for r in receivers]}
    )


def with_gain_error(captures: dict[str, np.ndarray], station: str, error_db: float) -> dict[str, np.ndarray]:
    """The int16 captures as a station whose gain is `error_db` too high delivers them."""
    scaled = np.rint(captures[station] * 10.0 ** (error_db / 20.0))
    if np.abs(scaled).max() >= INT16_FULL_SCALE:
        raise ValueError("the gain error would clip this capture")
    return {**captures, station: scaled.astype(np.int16)}


def complex_sets(sets: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    return [
        {s: (iq[0::2] + 1j * iq[1::2]).astype(np.complex64) / INT16_FULL_SCALE for s, iq in c.items()}
        for c in sets
    ]


@pytest.fixture(scope="module")
def scenes(reference):
    return simulate_scenes(40, seed=77, contract=reference)


@pytest.fixture(scope="module")
def clean(reference, scenes) -> list[dict[str, np.ndarray]]:
    """The capture sets that include the station with the gain error."""
    r = reference.receiver_ids.index(STATION)
    return [scenes.capture_set(i) for i in range(len(scenes)) if scenes.heard[i, r]]


def test_declared_offset_cancels_the_gain_error_in_the_features(reference, clean):
    gain = np.float32(10.0 ** (ERROR_DB / 20.0))
    captures = complex_sets(clean)
    corrupted = [{**c, STATION: c[STATION] * gain} for c in captures]
    plain, corrected = FeatureExtractor(reference), FeatureExtractor(declared(reference, {STATION: ERROR_DB}))
    want = plain.capture_sets(captures)
    uncorrected = plain.capture_sets(corrupted)
    got = corrected.capture_sets(corrupted)
    r = reference.receiver_ids.index(STATION)
    # Without the offset every band of the station reads 3 dB high (normalized: 3 dB / norm_scale_db) ...
    shift_db = (uncorrected[:, r] - want[:, r]) * reference.features.norm_scale_db
    np.testing.assert_allclose(shift_db, ERROR_DB, atol=1e-3)
    # ... with it, the features are the clean captures' up to float32 rounding.
    np.testing.assert_allclose(got, want, atol=1e-4)
    others = [i for i in range(len(reference.receivers)) if i != r]
    np.testing.assert_array_equal(got[:, others], want[:, others])


def test_training_path_applies_the_offset_too(reference, scenes):
    contract = declared(reference, {STATION: ERROR_DB})
    r = reference.receiver_ids.index(STATION)
    iq = (scenes.iq[..., 0::2] + 1j * scenes.iq[..., 1::2]).astype(np.complex64) / INT16_FULL_SCALE
    plain = FeatureExtractor(reference).scenes(iq, scenes.heard)
    offset = FeatureExtractor(contract).scenes(iq, scenes.heard)
    heard = scenes.heard[:, r]
    np.testing.assert_allclose(
        (plain[heard, r] - offset[heard, r]) * reference.features.norm_scale_db, ERROR_DB, atol=1e-3
    )
    assert not offset[~scenes.heard].any(), "an unheard receiver stays an all-zero channel"


def test_declared_offset_restores_the_models_estimate(reference, clean):
    session = open_session(REFERENCE / "model.onnx")
    corrupted = [with_gain_error(c, STATION, ERROR_DB) for c in clean]

    def positions(contract: Contract, sets) -> np.ndarray:
        return predict(session, contract, FeatureExtractor(contract).capture_sets(complex_sets(sets)))[:, :2]

    truth = positions(reference, clean)
    moved_km = np.linalg.norm(positions(reference, corrupted) - truth, axis=1) / 1e3
    restored_km = (
        np.linalg.norm(positions(declared(reference, {STATION: ERROR_DB}), corrupted) - truth, axis=1) / 1e3
    )
    assert np.median(moved_km) > 1.0, "a 3 dB gain error moves the estimate"
    assert np.median(restored_km) < 0.1 * np.median(moved_km)


def test_offsets_need_contract_version_2_and_change_the_fingerprint(reference):
    station = reference.receivers[2].model_copy(update={"gain_offset_db": ERROR_DB})
    receivers = (*reference.receivers[:2], station, *reference.receivers[3:])
    with pytest.raises(ValidationError, match="needs contract_version 2"):
        Contract.model_validate(
            {
                **reference.model_dump(),
                "contract_version": 1,
                "receivers": [r.model_dump() for r in receivers],
            }
        )
    offset = declared(reference, {STATION: ERROR_DB})
    assert offset.fingerprint() != declared(reference, {}).fingerprint()
    assert Contract.model_validate_json(offset.to_json()) == offset
    with pytest.raises(ValidationError, match="finite"):
        declared(reference, {STATION: float("nan")})
