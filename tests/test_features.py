"""The feature recipe: where power lands, that relative power survives, and that training equals serving."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest

from heimdall.contract.document import Contract
from heimdall.contract.features import FeatureExtractor, iq_from_int16
from heimdall.contract.filterbank import mel_filterbank, periodic_hann
from heimdall.training.evaluate import scene_features
from heimdall.training.simulate import simulate_scenes

REFERENCE = Path(__file__).resolve().parents[1] / "heimdall" / "reference" / "contract.json"


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract.load(REFERENCE)


@pytest.fixture(scope="module")
def extractor(contract: Contract) -> FeatureExtractor:
    return FeatureExtractor(contract)


def tone(freq_hz: float, amplitude: float, samples: int, fs: float) -> np.ndarray:
    return (amplitude * np.exp(2j * np.pi * freq_hz * np.arange(samples) / fs)).astype(np.complex64)


@pytest.mark.parametrize("n", [255, 256, 1024])
def test_window_is_librosas_periodic_hann(n):
    # scipy evaluates the cosine at different points (a symmetric window one longer, cut), so
    # equal to float64 rounding rather than bit for bit.
    expected = librosa.filters.get_window("hann", n, fftbins=True)
    np.testing.assert_allclose(periodic_hann(n), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("sr", "n_fft", "n_mels", "fmin", "fmax"),
    [
        (12_500.0, 256, 32, 0.0, 6_250.0),  # the reference contract's
        (22_050.0, 2048, 128, 20.0, 8_000.0),
        (8_000.0, 512, 40, 300.0, 3_400.0),
    ],
)
def test_filterbank_is_librosas_slaney_mel(sr, n_fft, n_mels, fmin, fmax):
    expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, norm=None)
    found = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    assert found.dtype == expected.dtype and found.shape == expected.shape
    # The same float64 arithmetic in the same order, so equal bit for bit.
    np.testing.assert_array_equal(found, expected)


def test_serving_imports_neither_librosa_nor_scipy_signal():
    # A fresh interpreter: this test process has librosa loaded for the comparisons above.
    code = (
        "import sys; from heimdall.contract.features import FeatureExtractor;"
        "from heimdall.contract.document import Contract;"
        f"FeatureExtractor(Contract.load({str(REFERENCE)!r})).warm_up();"
        "print(sorted(m for m in ('librosa', 'numba', 'scipy.signal') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_tone_lands_in_the_mel_band_with_the_nearest_centre(contract, extractor):
    s = contract.features
    centres = librosa.mel_frequencies(s.n_mels + 2, fmin=s.fmin_hz, fmax=s.fmax_hz)[1:-1]
    # Every FFT-bin-centred tone either side of the carrier; negative frequencies fold onto |f|.
    bins = np.arange(-s.n_fft // 2 + 1, s.n_fft // 2)
    freqs = bins * s.sample_rate_hz / s.n_fft
    iq = np.stack([tone(f, 0.5, 4096, s.sample_rate_hz) for f in freqs])
    loudest = extractor.log_mel(iq).mean(axis=-1).argmax(axis=-1)
    nearest = np.abs(centres[None, :] - np.abs(freqs)[:, None]).argmin(axis=1)
    np.testing.assert_array_equal(loudest, nearest)


def test_six_db_stronger_receiver_reads_six_db_higher(contract, extractor):
    s = contract.features
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(4096) + 1j * rng.standard_normal(4096)) * 1e-3
    weak = (tone(1_234.0, 0.01, 4096, s.sample_rate_hz) + noise).astype(np.complex64)
    strong = (weak * 10 ** (6 / 20)).astype(np.complex64)
    ids = contract.receiver_ids
    features = extractor.capture_sets([{ids[0]: weak, ids[1]: strong}])[0]
    np.testing.assert_allclose(features[1] - features[0], 6.0 / s.norm_scale_db, atol=2e-5)
    assert np.all(features[2:] == 0.0), "receivers absent from the capture set are zero channels"


def test_training_and_serving_paths_give_the_same_features(contract, extractor):
    scenes = simulate_scenes(24, seed=11, contract=contract)
    training = extractor.scenes(iq_from_int16(scenes.iq), scenes.heard)
    # Equal to float32 rounding, not bit for bit: BLAS may round a row of the mel matmul
    # differently with the row's place in the batch and its memory alignment.
    np.testing.assert_allclose(scene_features(extractor, scenes), training, atol=1e-6)  # the chunked loader
    assert (~scenes.heard).any(), "the scenes should exercise missing receivers"
    sets = [{rid: iq_from_int16(iq) for rid, iq in scenes.capture_set(i).items()} for i in range(len(scenes))]
    serving = extractor.capture_sets(sets)  # as a served batch
    np.testing.assert_allclose(serving, training, rtol=0, atol=1e-5)
    assert np.array_equal(serving.any(axis=(2, 3)), scenes.heard)


def test_a_batch_gives_each_capture_set_the_features_it_gets_alone(contract, extractor):
    rng = np.random.default_rng(5)
    ids = contract.receiver_ids

    def noise(n: int) -> np.ndarray:
        return ((rng.standard_normal(n) + 1j * rng.standard_normal(n)) * 0.01).astype(np.complex64)

    # Lengths differ within and across sets (crop and pad), and each set has its own receivers.
    sets = [
        {ids[0]: noise(4096), ids[3]: noise(1000), ids[5]: noise(6000)},
        {ids[1]: noise(1000), ids[2]: noise(4096)},
        {ids[6]: noise(300), ids[0]: noise(4096), ids[4]: noise(4096)},
    ]
    batch = extractor.capture_sets(sets)
    assert batch.shape == (3, *contract.input_shape)
    for i, captures in enumerate(sets):
        np.testing.assert_allclose(batch[i], extractor.capture_sets([captures])[0], atol=1e-6)
        assert [rid for rid, heard in zip(ids, batch[i].any(axis=(1, 2)), strict=True) if heard] == sorted(
            captures, key=ids.index
        )


def test_crop_keeps_first_frames_and_pad_repeats_frames_cyclically(contract, extractor):
    s = contract.features
    rng = np.random.default_rng(2)
    long = ((rng.standard_normal(8192) + 1j * rng.standard_normal(8192)) * 0.01).astype(np.complex64)
    full = extractor.log_mel(long[:4096])
    assert full.shape == (s.n_mels, s.n_frames)
    np.testing.assert_allclose(extractor.log_mel(long), full, atol=1e-6)  # float32 rounding, as above
    short_samples = 1024
    frames = 1 + (short_samples - s.n_fft) // s.hop  # 7
    short = extractor.log_mel(long[:short_samples])
    assert short.shape == (s.n_mels, s.n_frames)
    np.testing.assert_allclose(short[:, :frames], full[:, :frames], atol=1e-5)
    np.testing.assert_allclose(short, short[:, np.arange(s.n_frames) % frames], atol=1e-6)


def test_contract_json_round_trip(contract):
    again = Contract.model_validate_json(contract.to_json())
    assert again == contract
    assert again.fingerprint() == contract.fingerprint()


# The committed reference contract's fingerprint. It changes only if the
# feature recipe, the receivers, the frame or the output meaning change, and
# then the model must be retrained: that is what this pin is for.
REFERENCE_FINGERPRINT = "f6e9aaff0c4fea61"


def test_fingerprint_is_stable_and_ignores_accuracy(contract):
    assert contract.fingerprint() == REFERENCE_FINGERPRINT
    assert contract.model_copy(update={"accuracy": None}).fingerprint() == REFERENCE_FINGERPRINT


@pytest.mark.parametrize(
    "change",
    [
        lambda c: {
            "features": c.features.model_copy(update={"norm_offset_db": c.features.norm_offset_db + 0.01})
        },
        lambda c: {"features": c.features.model_copy(update={"n_mels": 40})},
        lambda c: {"features": c.features.model_copy(update={"hop": 64})},
        lambda c: {"receivers": tuple(reversed(c.receivers))},
        lambda c: {"reference": c.reference.model_copy(update={"lat": c.reference.lat + 1e-6})},
        lambda c: {"io": c.io.model_copy(update={"mean": "position"})},
    ],
    ids=["norm-offset", "n-mels", "hop", "receiver-order", "reference-point", "output-name"],
)
def test_fingerprint_changes_with_anything_that_changes_features_or_outputs(contract, change):
    assert contract.model_copy(update=change(contract)).fingerprint() != contract.fingerprint()
