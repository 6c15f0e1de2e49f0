"""Run a Python process as if some installed packages were not there (a venv without them, made cheaply).

``environment_without(tmp_path, "websockets", "wsproto")`` builds a directory of symlinks to every entry
of this interpreter's site-packages except those packages (and their ``.dist-info``), and returns the
command prefix and environment for a subprocess: ``python -S`` (no site-packages) with that directory
and the repository on ``PYTHONPATH``. Run such processes with ``--noreload``: Django's autoreloader
restarts the interpreter without ``-S``.
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
from pathlib import Path

from tests.servers import ROOT


def environment_without(tmp_path: Path, *hidden: str) -> tuple[list[str], dict[str, str]]:
    site_packages = Path(sysconfig.get_paths()["purelib"])
    linked = tmp_path / "site-packages"
    linked.mkdir(exist_ok=True)
    pattern = re.compile(rf"^({'|'.join(map(re.escape, hidden))})([-_.].*)?$", re.IGNORECASE)
    for entry in site_packages.iterdir():
        if not pattern.match(entry.name) and not (linked / entry.name).exists():
            (linked / entry.name).symlink_to(entry)
    env = {**os.environ, "PYTHONPATH": f"{linked}{os.pathsep}{ROOT}"}
    env.pop("PYTHONSTARTUP", None)
    return [sys.executable, "-S"], env
