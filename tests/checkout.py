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

LOCAL_DIRS = {"build", "dist", "test-artifacts", "__pycache__", "node_modules", "profiles"}


def _local_state(name: str) -> bool:
    """A file of a virtualenv, build, cache or database: no part of a clone (see .gitignore)."""
    *dirs, file = name.split("/")
    hidden = [d for d in dirs if d.startswith(".") and d != ".ci"]  # .venv*, .autobahn, caches
    return bool(hidden or LOCAL_DIRS & set(dirs) or any(d.endswith(".egg-info") for d in dirs)) or file.endswith(
        (".sqlite3", ".pyc")
    )


def checkout_files() -> list[str]:
    """The checkout's files relative to its root: tracked, or untracked and not ignored. Outside
    a git checkout (an unpacked sdist), every file but local state (virtualenvs, builds, caches)."""
    if not (ROOT / ".git").exists():
        names = (path.relative_to(ROOT).as_posix() for path in ROOT.rglob("*") if path.is_file())
        return sorted(name for name in names if not _local_state(name))
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
