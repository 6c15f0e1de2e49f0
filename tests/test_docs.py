"""The docs' code runs as written, and the docs site builds strictly.

Each page's ``# tether:`` blocks become one module, its tests pass.

A page's blocks are executed in order as a module registered in ``sys.modules``
and used as ``ROOT_URLCONF``, so its ``urlpatterns`` serve its own tests; then
each ``test_*`` function the page defines is awaited here.
"""

from __future__ import annotations

import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import override_settings

from tests.checkout import copy_checkout
from tests.servers import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

DOCS = ROOT / "docs"
PAGES = {
    "migrating-from-channels.md": ["test_chat", "test_anonymous_is_refused", "test_tutorial_rooms"],
    "faq.md": ["test_profile", "test_broken"],
    "testing.md": ["test_echo_and_broadcast", "test_nothing_arrives", "test_unknown_route"],
    "delivery.md": ["test_rejoin_gets_what_was_missed"],
}


def runnable_source(page: Path) -> str:
    """The page's ``# tether:`` python blocks, joined in order."""
    blocks = re.findall(r"```python\n(# tether:.*?)```", page.read_text(), re.DOTALL)
    assert blocks, f"{page} has no ```python block starting with '# tether:'"
    return "\n".join(blocks)


@pytest.fixture(params=list(PAGES))
def page_module(request: pytest.FixtureRequest) -> Iterator[types.ModuleType]:
    """The page's code as a module, serving as the URLconf for the test."""
    page = DOCS / request.param
    name = "docs_" + re.sub(r"\W", "_", page.stem)
    module = types.ModuleType(name, f"code blocks of {page.name}")
    module.__file__ = str(page)
    sys.modules[name] = module
    try:
        exec(compile(runnable_source(page), str(page), "exec"), module.__dict__)
        with override_settings(ROOT_URLCONF=name):
            yield module
    finally:
        del sys.modules[name]


async def test_docs_code_runs_as_written(page_module: types.ModuleType) -> None:
    """Every test a docs page defines passes against the handlers and views the page defines."""
    page = Path(str(page_module.__file__)).name
    defined = sorted(name for name in vars(page_module) if name.startswith("test_"))
    assert defined == sorted(PAGES[page]), f"{page} defines tests {defined}: update PAGES"
    for name in PAGES[page]:
        await getattr(page_module, name)()


# -- the documentation site ---------------------------------------------------------------------


def mkdocs_build(source: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of the site in ``source`` into ``site``, as CI runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_site_builds_strict(tmp_path: Path) -> None:
    """The docs site builds with --strict: the README as its guide, the API reference from the
    docstrings, links between pages rewritten to the site's pages."""
    done = mkdocs_build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr
    guide = (tmp_path / "site" / "guide" / "index.html").read_text()
    assert 'href="../security/"' in guide and 'src="../img/chat.png"' in guide
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert 'id="tether.WebSocket.send_json"' in reference and 'id="tether.testing.connect"' in reference


def test_strict_build_fails_on_a_broken_link_or_a_missing_docstring(tmp_path: Path) -> None:
    """A link to a page that doesn't exist, or a public function of the API reference without a
    docstring, each fails the strict build, named in its output."""
    source = copy_checkout(tmp_path / "broken-link")
    with (source / "docs" / "faq.md").open("a") as page:
        page.write("\nSee [the missing page](no-such-page.md).\n")
    done = mkdocs_build(source, tmp_path / "site1")
    assert done.returncode != 0 and "no-such-page.md" in done.stderr, done.stderr

    source = copy_checkout(tmp_path / "no-docstring")
    with (source / "tether" / "urls.py").open("a") as module:
        module.write("\n\ndef undocumented_helper() -> None:\n    pass\n")
    done = mkdocs_build(source, tmp_path / "site2")
    assert done.returncode != 0, done.stderr
    assert "tether.urls.undocumented_helper has no docstring" in done.stderr, done.stderr
