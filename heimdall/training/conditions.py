"""Evaluation over a grid of conditions: is the model accurate and honest when the world differs?

Each condition is a `Physics` (one parameter moved away from NOMINAL, plus
WORLD, the training distribution) with its own held-out scenes: seeds from
`SeedSequence([EVAL_SEED, condition index, block])`, which training (seeds
spawned from `SeedSequence(train_seed)`) never draws. Each block of
`BLOCK_SCENES` is one deployment, so a condition with receiver calibration
errors sees several sets of them. Per condition: median and 95th-percentile
error of the model, the RSSI baseline and the grid oracle (what received power
allows, `heimdall.training.oracle`), and the fraction of true positions inside
the model's ellipses at each nominal level (the reliability curve; 0.50 and
0.95 are reported). Beside them, the same oracle told only WORLD, as the model
is: its median error and the coverage of its posterior's ellipses are what a
method that is not told the condition can reach from the same data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heimdall.contract.document import ConditionAccuracy, Contract
from heimdall.contract.features import FeatureExtractor
from heimdall.contract.geo import chi2_2d_scale
from heimdall.training.baseline import RssiMultilateration, received_power_dbm
from heimdall.training.evaluate import EVAL_SEED, mahalanobis_sq, open_session, predict, scene_features
from heimdall.training.oracle import GridOracle
from heimdall.training.physics import NOMINAL, WORLD, Physics
from heimdall.training.simulate import Scenes, simulate_scenes

# Index order fixes each condition's seeds: add new ones at the end.
CONDITIONS: tuple[tuple[str, Physics], ...] = (
    ("nominal (n=3, 6 dB, 1-50 W)", NOMINAL),
    ("8 dB shadowing, exponent 2.7-3.5", Physics(shadowing_db=(8.0, 8.0), path_loss_exponent=(2.7, 3.5))),
    (
        "receiver gain error N(0, 3 dB) + 1 dB per capture",
        Physics(receiver_gain_sigma_db=3.0, capture_gain_sigma_db=1.0),
    ),
    ("exactly three receivers", Physics(receivers_heard=3)),
    ("0.1-1 W", Physics(tx_power_w=(0.1, 1.0))),
    ("50-100 W", Physics(tx_power_w=(50.0, 100.0))),
    ("world (the training distribution)", WORLD),
)
BLOCK_SCENES = 250
RELIABILITY_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass
class ConditionResult:
    accuracy: ConditionAccuracy
    reliability: np.ndarray  # coverage at each of RELIABILITY_LEVELS


def condition_scenes(index: int, physics: Physics, n: int, contract: Contract) -> list[Scenes]:
    """The held-out scenes of condition `index`, one deployment per block of BLOCK_SCENES."""
    blocks = []
    for b, start in enumerate(range(0, n, BLOCK_SCENES)):
        seed = int(np.random.SeedSequence([EVAL_SEED, index, b]).generate_state(1)[0])
        blocks.append(simulate_scenes(min(BLOCK_SCENES, n - start), seed, contract, physics=physics))
    return blocks


def _km(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.linalg.norm(estimate - truth, axis=1) / 1e3


def _inside(d2: np.ndarray, level: float) -> float:
    """The fraction of squared Mahalanobis distances within the `level` ellipse."""
    return float((d2 <= chi2_2d_scale(level) ** 2).mean())


def _as_output(mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """A Gaussian's mean and covariance as model output rows: east, north, sigma east, sigma north, rho."""
    sigma = np.sqrt(np.stack([cov[:, 0, 0], cov[:, 1, 1]], axis=1))
    return np.column_stack([mean, sigma, cov[:, 0, 1] / (sigma[:, 0] * sigma[:, 1])])


def evaluate_conditions(
    model_dir: Path,
    n_scenes: int = 2000,
    conditions: tuple[tuple[str, Physics], ...] = CONDITIONS,
    advance: Callable[[str], None] | None = None,
) -> list[ConditionResult]:
    """The grid for `model_dir`'s model.onnx; `advance(name)` is called after each condition."""
    model_dir = Path(model_dir)
    contract = Contract.load(model_dir / "contract.json")
    session, extractor = open_session(model_dir / "model.onnx"), FeatureExtractor(contract)
    baseline = RssiMultilateration(contract)
    world = GridOracle(contract, WORLD)
    results = []
    for index, (name, physics) in enumerate(conditions):
        blocks = condition_scenes(index, physics, n_scenes, contract)
        truth = np.concatenate([np.stack([s.tx_east_m, s.tx_north_m], axis=1) for s in blocks])
        prediction = np.concatenate(
            [predict(session, contract, scene_features(extractor, s)) for s in blocks]
        )
        power = np.concatenate(
            [received_power_dbm(s.iq, s.heard, contract.features.sample_rate_hz) for s in blocks]
        )
        model_km = _km(prediction[:, :2], truth)
        baseline_km = _km(baseline.locate(power), truth)
        world_mean, world_cov = world.posterior(power)
        condition_mean = world_mean if physics == WORLD else GridOracle(contract, physics).locate(power)
        oracle_km = _km(condition_mean, truth)
        world_d2 = mahalanobis_sq(_as_output(world_mean, world_cov), truth)
        d2 = mahalanobis_sq(prediction, truth)
        reliability = np.array([_inside(d2, p) for p in RELIABILITY_LEVELS])
        accuracy = ConditionAccuracy(
            condition=name,
            scenes=len(truth),
            median_error_km=round(float(np.median(model_km)), 3),
            p95_error_km=round(float(np.percentile(model_km, 95)), 3),
            baseline_median_error_km=round(float(np.median(baseline_km)), 3),
            baseline_p95_error_km=round(float(np.percentile(baseline_km, 95)), 3),
            oracle_median_error_km=round(float(np.median(oracle_km)), 3),
            oracle_p95_error_km=round(float(np.percentile(oracle_km, 95)), 3),
            coverage_50=round(_inside(d2, 0.5), 4),
            coverage_95=round(_inside(d2, 0.95), 4),
            world_oracle_median_error_km=round(float(np.median(_km(world_mean, truth))), 3),
            world_oracle_coverage_50=round(_inside(world_d2, 0.5), 4),
            world_oracle_coverage_95=round(_inside(world_d2, 0.95), 4),
        )
        results.append(ConditionResult(accuracy, reliability))
        if advance is not None:
            advance(name)
    return results


def plot_reliability(path: Path, results: list[ConditionResult]) -> None:
    """Coverage against nominal level, one line per condition: on the diagonal is honest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="calibrated")
    ax.fill_between([0, 1], [-0.03, 0.97], [0.03, 1.03], color="0.9", label="within 3 points")
    for r in results:
        ax.plot(RELIABILITY_LEVELS, r.reliability, marker="o", ms=3, lw=1.2, label=r.accuracy.condition)
    ax.set(
        xlabel="nominal ellipse level",
        ylabel="fraction of true positions inside",
        xlim=(0, 1),
        ylim=(0, 1),
        aspect="equal",
        title=f"reliability, {results[0].accuracy.scenes} held-out scenes per condition",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
