"""Held-out evaluation of an exported model (ONNX + contract.json) against the RSSI baseline.

onnxruntime and numpy only. The scenes come from `simulate_scenes` with
EVAL_SEED, a seed training never draws (training seeds are spawned from
`SeedSequence(train_seed)`), so the figures are out of sample. Errors are
distances in the local east/north frame (km) between true and estimated
position; coverage is the fraction of true positions whose squared Mahalanobis
distance under the predicted covariance is within chi2_2d_scale(level)^2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from heimdall.contract.document import Accuracy, Contract
from heimdall.contract.features import FeatureExtractor, iq_from_int16
from heimdall.contract.geo import chi2_2d_scale, ellipse
from heimdall.training.baseline import NAME as BASELINE_NAME
from heimdall.training.baseline import RssiMultilateration, received_power_dbm
from heimdall.training.simulate import Scenes, simulate_scenes, station_enu

EVAL_SEED = 20_251_126
# Scenes per FeatureExtractor call: few enough that the STFT temporaries stay in the CPU cache.
_FEATURE_CHUNK = 8


def scene_features(extractor: FeatureExtractor, scenes: Scenes) -> np.ndarray:
    """The training path: (N, receivers, mels, frames) float32 features of simulated scenes."""
    out = np.empty((len(scenes), *extractor.contract.input_shape), dtype=np.float32)
    for start in range(0, len(scenes), _FEATURE_CHUNK):
        part = slice(start, start + _FEATURE_CHUNK)
        out[part] = extractor.scenes(iq_from_int16(scenes.iq[part]), scenes.heard[part])
    return out


def open_session(model_path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def predict(
    session: ort.InferenceSession, contract: Contract, features: np.ndarray, batch: int = 512
) -> np.ndarray:
    """(N, 5) float64: east_m, north_m, sigma_east_m, sigma_north_m, rho."""
    io = contract.io
    parts = [
        session.run([io.mean, io.covariance], {io.input: features[i : i + batch]})
        for i in range(0, len(features), batch)
    ]
    return np.concatenate([np.concatenate(p, axis=1) for p in parts]).astype(np.float64)


def mahalanobis_sq(prediction: np.ndarray, truth_en: np.ndarray) -> np.ndarray:
    """(N,) squared Mahalanobis distance of true (east, north) from the predicted Gaussian."""
    ze = (truth_en[:, 0] - prediction[:, 0]) / prediction[:, 2]
    zn = (truth_en[:, 1] - prediction[:, 1]) / prediction[:, 3]
    rho = prediction[:, 4]
    return (ze**2 - 2 * rho * ze * zn + zn**2) / (1 - rho**2)


def coverage(prediction: np.ndarray, truth_en: np.ndarray, level: float) -> float:
    return float((mahalanobis_sq(prediction, truth_en) <= chi2_2d_scale(level) ** 2).mean())


def evaluate(
    model_dir: Path, n_scenes: int = 2000, seed: int = EVAL_SEED, plot_path: Path | None = None
) -> Accuracy:
    """Accuracy of `model_dir`'s model.onnx and its RSSI baseline on `n_scenes` held-out scenes."""
    model_dir = Path(model_dir)
    contract = Contract.load(model_dir / "contract.json")
    scenes = simulate_scenes(n_scenes, seed, contract)
    truth = np.stack([scenes.tx_east_m, scenes.tx_north_m], axis=1)
    prediction = predict(
        open_session(model_dir / "model.onnx"), contract, scene_features(FeatureExtractor(contract), scenes)
    )
    power = received_power_dbm(scenes.iq, scenes.heard, contract.features.sample_rate_hz)
    baseline = RssiMultilateration(contract).locate(power)
    error_km = np.linalg.norm(prediction[:, :2] - truth, axis=1) / 1e3
    baseline_km = np.linalg.norm(baseline - truth, axis=1) / 1e3
    accuracy = Accuracy(
        scenes=n_scenes,
        median_error_km=round(float(np.median(error_km)), 3),
        p95_error_km=round(float(np.percentile(error_km, 95)), 3),
        coverage_50=round(coverage(prediction, truth, 0.50), 4),
        coverage_95=round(coverage(prediction, truth, 0.95), 4),
        baseline=BASELINE_NAME,
        baseline_median_error_km=round(float(np.median(baseline_km)), 3),
        baseline_p95_error_km=round(float(np.percentile(baseline_km, 95)), 3),
    )
    if plot_path is not None:
        _plot(Path(plot_path), contract, truth, prediction, error_km, baseline_km, accuracy)
    return accuracy


def _plot(
    path: Path,
    contract: Contract,
    truth: np.ndarray,
    prediction: np.ndarray,
    error_km: np.ndarray,
    baseline_km: np.ndarray,
    acc: Accuracy,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse as EllipsePatch

    fig, (ax, cdf) = plt.subplots(1, 2, figsize=(12, 5.5), gridspec_kw={"width_ratios": [1.5, 1]})
    shown = slice(0, 100)
    t, p = truth[shown] / 1e3, prediction[shown, :2] / 1e3
    ax.plot(np.stack([t[:, 0], p[:, 0]]), np.stack([t[:, 1], p[:, 1]]), color="0.7", lw=0.6, zorder=1)
    ax.scatter(t[:, 0], t[:, 1], s=8, color="tab:green", label="true transmitter", zorder=2)
    ax.scatter(p[:, 0], p[:, 1], s=8, color="tab:blue", label="model estimate", zorder=2)
    for i, colour in zip(range(6), plt.cm.tab10(np.arange(6) + 3), strict=True):
        sigma_east, sigma_north, rho = prediction[i, 2:5]
        e = ellipse(sigma_east, sigma_north, rho, level=0.95)
        ax.add_patch(
            EllipsePatch(
                tuple(prediction[i, :2] / 1e3),
                2 * e.semi_major_m / 1e3,
                2 * e.semi_minor_m / 1e3,
                angle=90.0 - e.bearing_deg,
                fill=False,
                color=colour,
                lw=1.2,
            )
        )
        ax.plot(*(truth[i] / 1e3), marker="*", ms=11, color=colour, zorder=3)
    rx = station_enu(contract) / 1e3
    ax.scatter(rx[:, 0], rx[:, 1], marker="^", s=70, color="black", label="WebSDR receiver", zorder=4)
    for k, ((x, y), station) in enumerate(zip(rx, contract.receivers, strict=True)):
        crowded = (np.hypot(*(rx[:k] - (x, y)).T) < 10).any()  # Coazze is 1.6 km from Giaveno
        ax.annotate(
            station.id, (x, y), textcoords="offset points", xytext=(4, -10 if crowded else 4), fontsize=7
        )
    ax.set(
        xlabel="east of reference (km)",
        ylabel="north of reference (km)",
        aspect="equal",
        title="held-out scenes: true -> estimate, six 95% ellipses (stars: truth)",
    )
    ax.legend(loc="lower left", fontsize=7)
    for values, label in ((error_km, "model"), (baseline_km, "RSSI least squares")):
        cdf.plot(
            np.sort(values),
            np.linspace(0, 1, len(values)),
            label=f"{label}: median {np.median(values):.1f} km",
        )
    cdf.set(
        xlabel="position error (km)",
        ylabel="fraction of scenes",
        xlim=(0, np.percentile(baseline_km, 99)),
        title=f"{acc.scenes} scenes; ellipse coverage 50%: {acc.coverage_50:.3f}, 95%: {acc.coverage_95:.3f}",
    )
    cdf.grid(alpha=0.3)
    cdf.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
