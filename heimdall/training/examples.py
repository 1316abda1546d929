"""The one example capture set: the API's OpenAPI example, the README's curl,
the tests, the benchmark and the load test all use it.

It is a simulated scene (seeded, so every run and machine gets the same bytes)
that all seven receivers heard: 7 x 4096 samples, the canonical size.
"""

from __future__ import annotations

import base64
from functools import cache
from typing import Literal

import numpy as np

from heimdall.training.simulate import Scenes, simulate_scenes

EXAMPLE_SEED = 20261126

Form = Literal["int16", "pairs"]


@cache
def example_scene() -> tuple[Scenes, int]:
    """The simulated scenes and the index of the first one every receiver heard."""
    scenes = simulate_scenes(16, EXAMPLE_SEED)
    everyone = np.flatnonzero(scenes.heard.all(axis=1))
    if not len(everyone):
        raise RuntimeError(f"seed {EXAMPLE_SEED} gives no scene heard by every receiver")
    return scenes, int(everyone[0])


def example_captures() -> dict[str, np.ndarray]:
    """Station id -> interleaved int16 I/Q (4096 samples each)."""
    scenes, i = example_scene()
    return scenes.capture_set(i)


def request_body(captures: dict[str, np.ndarray], form: Form = "int16") -> dict:
    """A POST /predict body: base64 int16 (compact) or JSON [[I, Q], ...] pairs (what browsers send)."""
    if form == "pairs":
        items = [{"station": s, "iq": iq.reshape(-1, 2).tolist()} for s, iq in captures.items()]
    else:
        items = [
            {"station": s, "iq": base64.b64encode(iq.astype("<i2").tobytes()).decode("ascii")}
            for s, iq in captures.items()
        ]
    return {"captures": items, "encoding": "int16"}


def octet_body(captures: dict[str, np.ndarray]) -> tuple[bytes, str]:
    """The octet-stream form: concatenated int16 I/Q and the `stations` query value."""
    return b"".join(iq.astype("<i2").tobytes() for iq in captures.values()), ",".join(captures)
