"""The simulator's physical parameters as distributions: the world a model trains for and is judged in.

Each range is drawn per scene (uniform; transmit power log-uniform) unless
stated otherwise. Powers are dB or W, distances metres.

- Shadowing sigma: NOMINAL keeps 6 dB; WORLD 4-10 dB, the spread of log-normal
  location variability reported for VHF land-mobile links from open suburban
  to hilly, built-up terrain (Rappaport, "Wireless Communications", 2nd ed.,
  sec. 4.9.2; ITU-R P.1546-6 Annex 5 sec. 12, location variability).
- Path-loss exponent: NOMINAL 3; WORLD 2.7-3.5 per scene, Rappaport table 4.2
  for built-up areas (a transmitter's surroundings set its slope).
- Transmit power: NOMINAL 1-50 W; WORLD 0.1-100 W, from a handheld on its low
  setting (0.1-0.5 W) to a base station with a 100 W amplifier (the usual
  output classes of 2 m amateur equipment).
- Receiver calibration: each WebSDR's antenna, cable, preamplifier and SDR gain
  differ by several dB (design.md). WORLD draws a fixed error per receiver,
  N(0, 3 dB), for each simulated deployment (one `simulate_scenes` call), plus
  N(0, 1 dB) per capture for gain drift and AGC steps. NOMINAL has none.
- Availability: as the simulator always did, each receiver down with
  probability p ~ U(0, 0.4) per scene, `min_receivers` kept; `receivers_heard`
  instead keeps exactly that many, chosen at random.

NOMINAL is the simulator as it was before these distributions: with it,
`simulate_scenes` draws the same random numbers in the same order, so the
example capture set and every figure built on nominal scenes stay bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Physics:
    """Ranges (low, high) of the scene parameters; low == high is a fixed value."""

    shadowing_db: tuple[float, float] = (6.0, 6.0)
    path_loss_exponent: tuple[float, float] = (3.0, 3.0)
    tx_power_w: tuple[float, float] = (1.0, 50.0)
    receiver_gain_sigma_db: float = 0.0  # fixed per receiver for one simulated deployment
    capture_gain_sigma_db: float = 0.0  # independent per capture
    receivers_heard: int | None = None  # exactly this many receivers heard; None: random dropouts

    def __post_init__(self) -> None:
        for name in ("shadowing_db", "path_loss_exponent", "tx_power_w"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name}: expected 0 < low <= high, found {(low, high)}")
        if self.receiver_gain_sigma_db < 0 or self.capture_gain_sigma_db < 0:
            raise ValueError("gain sigmas must be >= 0 dB")


NOMINAL = Physics()
WORLD = Physics(
    shadowing_db=(4.0, 10.0),
    path_loss_exponent=(2.7, 3.5),
    tx_power_w=(0.1, 100.0),
    receiver_gain_sigma_db=3.0,
    capture_gain_sigma_db=1.0,
)
