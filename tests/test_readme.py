"""README.md as a newcomer uses it: its commands run, and its configuration table is the settings class.

Its ```sh and ```python blocks run in order from the repository root against a served model
(localhost:3000 rewritten to that server's port); a block right after a line
`<!-- not run: REASON -->` is skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydantic.fields import FieldInfo
from support import ROOT, Serve

from heimdall.serving.settings import Settings

README = ROOT / "README.md"
NOT_RUN = re.compile(r"^<!-- not run: (.+) -->$")
FENCE = re.compile(r"^```(\w*)$")
RUNNERS = {"sh": ["bash", "-euo", "pipefail", "-c"], "python": [sys.executable, "-c"]}


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    not_run: str | None  # the reason given, when skipped


def readme_blocks() -> list[Block]:
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j] == "```")
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(before.strip())
        text = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(i + 1, fence.group(1), text, marker.group(1) if marker else None))
        i = end + 1
    return blocks


@pytest.fixture(scope="module")
def served(reference_tag, tmp_path_factory) -> Iterator[Serve]:
    service = Serve(reference_tag, tmp_path_factory.mktemp("readme") / "serve.log")
    yield service
    service.stop()


@pytest.mark.slow
def test_readme_blocks_run_in_order(served, mlflow_sqlite, tmp_path):
    blocks = [b for b in readme_blocks() if b.language in RUNNERS and b.not_run is None]
    assert blocks, "README.md has no runnable sh or python block"
    # curl's config file: an HTTP error fails the command (as -f would) instead of printing a 4xx body
    (tmp_path / ".curlrc").write_text("fail\n")
    env = {
        **os.environ,
        "CURL_HOME": str(tmp_path),
        # the CLI's registry is the one the served model came from, not .heimdall/ in the checkout
        "MLFLOW_TRACKING_URI": mlflow_sqlite,
    }
    before = {p.name for p in ROOT.iterdir()}
    try:
        for block in blocks:
            text = re.sub(r"(localhost|127\.0\.0\.1):3000", f"127.0.0.1:{served.port}", block.text)
            run = subprocess.run(
                [*RUNNERS[block.language], text],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert run.returncode == 0, (
                f"README.md line {block.line} ({block.language}) exited {run.returncode}:\n"
                f"{block.text}\nstdout: {run.stdout[-2000:]}\nstderr: {run.stderr[-3000:]}"
            )
    finally:
        # Files the blocks wrote at the top of the checkout (e.g. example.json) go.
        for path in ROOT.iterdir():
            if path.name not in before and path.is_file():
                path.unlink()


def test_every_block_says_why_it_is_not_run():
    for block in readme_blocks():
        if block.not_run is not None:
            assert block.not_run.strip(), f"README.md line {block.line}: `not run` without a reason"


def _default(info: FieldInfo) -> str:
    value = info.get_default()
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def _range(info: FieldInfo) -> str:
    """Bounds as the README writes them: `1 – 64`, `> 0 – 5000`, `≥ 256`, `> 0`, `≤ 200 characters`."""
    bounds = {}
    for m in info.metadata:
        for key in ("ge", "gt", "le", "lt", "max_length"):
            if getattr(m, key, None) is not None:
                bounds[key] = getattr(m, key)
    if "max_length" in bounds:
        return f"≤ {bounds['max_length']} characters"
    lower = f"{bounds['ge']}" if "ge" in bounds else f"> {bounds['gt']}" if "gt" in bounds else ""
    upper = f"{bounds['le']}" if "le" in bounds else f"< {bounds['lt']}" if "lt" in bounds else ""
    if lower and upper:
        return f"{lower} – {upper}"
    if "ge" in bounds:
        return f"≥ {bounds['ge']}"
    if "le" in bounds:
        return f"≤ {bounds['le']}"
    return lower or upper


def test_configuration_table_is_the_settings_class():
    rows = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`HEIMDALL_\w+`", cells[0]):
            rows[cells[0].strip("`")] = cells[1:]
    prefix = Settings.model_config["env_prefix"]
    expected = {f"{prefix}{name.upper()}": info for name, info in Settings.model_fields.items()}
    assert set(rows) == set(expected), (
        f"README.md's configuration table lacks {sorted(set(expected) - set(rows))} "
        f"and lists unknown {sorted(set(rows) - set(expected))}"
    )
    for name, info in expected.items():
        default, bounds, meaning = rows[name]
        assert (default, bounds) == (_default(info), _range(info)), (
            f"README.md: expected | `{name}` | {_default(info)} | {_range(info)} | ... |"
        )
        assert meaning, f"README.md: {name} has no meaning"
