"""RFC 6455 conformance with the Autobahn testsuite: tether adds no failure to the server's own.

The fuzzing client (Python 2 only) runs cases 1-7 and 10 against tether's echo route and against a
bare ASGI echo loop on the same server; the sets of failed cases must be equal.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require
from tests.servers import ROOT, serve

pytestmark = [pytest.mark.conformance, pytest.mark.django_db(transaction=True)]

AUTOBAHN = Path(os.environ.get("TETHER_AUTOBAHN_DIR", ROOT / ".autobahn"))
PYTHON2 = os.environ.get("TETHER_PYTHON2", "/root/.pyenv/versions/2.7.18/bin/python")


def _wstest(url: str, outdir: Path) -> dict[str, str]:
    """Run the fuzzing client against ``url``; returns {case: behaviour}."""
    spec = {
        "outdir": str(outdir),
        "servers": [{"agent": "app", "url": url}],
        "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"],
        "exclude-cases": ["6.4.*"],  # timing-dependent fragment tests
        "exclude-agent-cases": {},
    }
    (outdir / "spec.json").write_text(json.dumps(spec))
    subprocess.run(
        [PYTHON2, "-c", "from autobahntestsuite.wstest import run; run()", "-m", "fuzzingclient", "-s", "spec.json"],
        cwd=outdir,
        env={**os.environ, "PYTHONPATH": str(AUTOBAHN)},
        check=True,
        capture_output=True,
        timeout=300,
    )
    report = json.loads((outdir / "index.json").read_text())["app"]
    return {case: result["behavior"] for case, result in report.items()}


@pytest.fixture(scope="module")
def autobahn() -> None:
    installed = (AUTOBAHN / "autobahntestsuite").is_dir() and Path(PYTHON2).exists()
    require(
        installed,
        f"the Autobahn testsuite is not installed in {AUTOBAHN} (scripts/test.sh installs it with Python 2.7)",
    )


@pytest.mark.parametrize("kind", ["uvicorn", "uvicorn-sansio", "uvicorn-wsproto"])
def test_tether_adds_no_autobahn_failure(kind: str, autobahn: None, tmp_path: Path) -> None:
    """Cases 1-7 and 10: tether's echo fails exactly the cases the bare ASGI loop fails, on each implementation."""
    results = {}
    for name, app, path in (
        ("raw", "tests.raw_echo:application", "/"),
        ("tether", "tests.asgi:application", "/ws/any/"),
    ):
        outdir = tmp_path / name
        outdir.mkdir()
        with serve(kind, app=app) as server:
            results[name] = _wstest(server.url + path, outdir)
    assert len(results["tether"]) > 200  # the suite really ran
    failed = {
        name: sorted(c for c, b in r.items() if b not in ("OK", "NON-STRICT", "INFORMATIONAL"))
        for name, r in results.items()
    }
    assert failed["tether"] == failed["raw"], failed
