"""A Python environment with only the core pins of pyproject.toml: what the Bento installs.

Serving a Bento from here proves the Bento's own src/ is complete: the project is not
installed, so a module that bentofile.yaml leaves out is an ImportError, not a file quietly
found in the checkout (as an editable install would find it).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
# Kept between runs (it takes a minute or two to install); rebuilt when the pins change.
LOCATION = ROOT / ".heimdall" / "core-env"


def core_env(location: Path = LOCATION) -> Path:
    """The environment's bin/ directory, created or refreshed so that it holds exactly PINS."""
    stamp = location / "pins.sha256"
    digest = hashlib.sha256("\n".join(PINS).encode()).hexdigest()
    if not (stamp.is_file() and stamp.read_text() == digest):
        print(f"creating a core-pins environment in {location} ({len(PINS)} pins)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(location)], check=True)
        subprocess.run(
            [str(location / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off", *PINS],
            check=True,
        )
        stamp.write_text(digest)
    return location / "bin"
