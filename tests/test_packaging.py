"""``python -m build`` makes an sdist and a wheel that ``twine check`` accepts, with everything
the package needs at run time in the wheel, and the wheel works once installed in a clean virtualenv.

The build runs on a copy of the checkout's files (tests/checkout.py), as a fresh clone would.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import tether
from tests.checkout import checkout_files, copy_checkout, run

pytestmark = pytest.mark.slow


@dataclass
class Dist:
    wheel: Path
    sdist: Path


def build(source: Path, *args: str) -> Path:
    """Run ``python -m build`` in ``source``; returns its ``dist/``."""
    run([sys.executable, "-m", "build", *args], cwd=source)
    return source / "dist"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    out = build(copy_checkout(tmp_path_factory.mktemp("src")))
    (wheel,) = out.glob("django_tether-*-py3-none-any.whl")
    (sdist,) = out.glob("django_tether-*.tar.gz")
    return Dist(wheel, sdist)


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_the_version_is_tethers(dist: Dist) -> None:
    """Both archives carry ``tether.__version__``, the one place the version is written."""
    assert dist.wheel.name == f"django_tether-{tether.__version__}-py3-none-any.whl"
    assert dist.sdist.name == f"django_tether-{tether.__version__}.tar.gz"


def test_twine_check_accepts_both(dist: Dist) -> None:
    """``twine check --strict`` passes the sdist and the wheel (metadata, README rendering)."""
    output = run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dist.sdist), str(dist.wheel)], cwd=dist.wheel.parent
    )
    assert output.count("PASSED") == 2, output


def test_wheel_holds_the_whole_package(dist: Dist) -> None:
    """Every file of the checkout under tether/ is in the wheel (code, migrations, py.typed,
    templates, static files), with the license, and nothing from tests/ or examples/."""
    names = wheel_names(dist.wheel)
    package = {name for name in checkout_files() if name.startswith("tether/")}
    assert package - names == set()
    assert {"tether/py.typed", "tether/migrations/0001_initial.py", "tether/templatetags/tether.py"} <= names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert not [name for name in names if name.startswith(("tests/", "examples/", "docs/"))]
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_package_data_globs_take_new_templates_and_static_files(tmp_path: Path) -> None:
    """A template or static file added under tether/ later (tether.js) lands in the wheel with no
    change to the build configuration."""
    source = copy_checkout(tmp_path / "src")
    added = ["tether/static/tether/probe.js", "tether/templates/tether/probe.html"]
    for name in added:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("probe\n")
    (wheel,) = build(source, "--wheel").glob("*.whl")
    assert set(added) <= wheel_names(wheel)


def test_sdist_holds_the_project(dist: Dist) -> None:
    """The sdist carries what ``scripts/test.sh`` and the docs need: the chat example (its
    templates, JavaScript, migrations), tests, docs, scripts, changelog and license."""
    with tarfile.open(dist.sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    expected = {
        "README.md", "CHANGELOG.md", "LICENSE", "mkdocs.yml", "pyproject.toml",
        "tether/py.typed", "tether/migrations/0001_initial.py",
        "examples/chat/chat/static/chat/chat.js", "examples/chat/chat/static/chat/chat.css",
        "examples/chat/chat/templates/chat/room.html", "examples/chat/chat/migrations/0001_initial.py",
        "tests/test_packaging.py", "docs/index.md", "scripts/test.sh", "scripts/docs.sh",
    }  # fmt: skip
    assert expected - names == set()
    assert not [name for name in names if name.endswith((".sqlite3", ".pyc"))]


CHECK_INSTALLED = """
import importlib.resources, pathlib, sys
import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["tether", "django.contrib.auth", "django.contrib.contenttypes", "django.contrib.staticfiles"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    STATIC_URL="static/",
)
django.setup()
import tether
from django.core.management import call_command
from django.db.migrations.loader import MigrationLoader

here = pathlib.Path(tether.__file__).parent
assert "site-packages" in here.parts, here
assert importlib.resources.files("tether").joinpath("py.typed").is_file()
assert ("tether", "0001_initial") in MigrationLoader(None, ignore_no_migrations=True).disk_migrations
call_command("check")
call_command("migrate", "--noinput", verbosity=0)
print("installed at", here)
"""


def test_wheel_installs_into_a_clean_virtualenv(dist: Dist, tmp_path: Path) -> None:
    """``pip install`` of the wheel into a new virtualenv (outside the checkout) gives an importable
    tether whose app loads, whose migrations run and that ships ``py.typed``."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", str(dist.wheel)], cwd=tmp_path)
    output = run([python, "-c", CHECK_INSTALLED], cwd=tmp_path)
    assert f"installed at {venv}" in output, output
