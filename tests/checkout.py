"""This checkout as a newcomer gets it: a copy of its files, and a clean shell environment.

``copy_checkout(dest)`` copies the files git knows of (tracked, or new and not
ignored), so no ``.venv``, ``build/`` or ``*.egg-info`` of the developer's comes
along. ``clean_env()`` is ``os.environ`` without this test run's virtualenv,
settings module or import path: what a fresh terminal has.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.servers import ROOT


def checkout_files() -> list[str]:
    """The checkout's files relative to its root: tracked, or untracked and not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (ROOT / name).is_file()})


def copy_checkout(dest: Path) -> Path:
    """Copy the checkout's files into ``dest`` (created); returns ``dest``."""
    for name in checkout_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


def clean_env() -> dict[str, str]:
    """The environment of a new terminal: no virtualenv, DJANGO_SETTINGS_MODULE or PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    prefixes = (str(ROOT), os.environ.get("VIRTUAL_ENV") or str(ROOT))
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(prefixes))
    return env


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run ``command``; returns stdout and stderr together, raises with them on a non-zero exit."""
    done = subprocess.run(
        command,
        cwd=cwd,
        env=clean_env() if env is None else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}")
    return done.stdout
