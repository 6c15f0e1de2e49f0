"""The benchmark suite still runs: bench/run.sh --tiny produces numbers for every scenario.

Slow the first time (it builds bench/.venv and installs the Node client); skipped only when Node.js
is not installed. It asserts that numbers come out, never what they are.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.bench


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="needs Node.js and npm")
def test_tiny_run_produces_numbers_for_every_scenario(tmp_path: Path, redis_server: None, postgres: None) -> None:
    """A tiny run writes the page, a plot per scenario, and a positive figure for every app and scenario."""
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV")}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "run.sh"), "--tiny", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"bench/run.sh failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["skipped"] == {}, results["skipped"]
    for scenario in ("echo", "fanout", "cross", "idle", "hello", "handshake"):
        apps = results["data"][scenario]
        assert apps, f"no app measured {scenario}"
        for app, sizes in apps.items():
            for rows in sizes.values():
                assert all(isinstance(r["rate"], (int, float)) and r["rate"] > 0 for r in rows), (scenario, app, rows)
        assert (tmp_path / "img" / f"bench-{scenario}.png").stat().st_size > 0
    assert "raw-sansio" in results["data"]["echo"]  # every implementation has its own raw baseline
    page = (tmp_path / "benchmarks.md").read_text()
    assert "x raw anonymous (same server)" in page
    page = (tmp_path / "benchmarks.md").read_text()
    assert "## Echo" in page and "x raw" in page
