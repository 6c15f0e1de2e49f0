"""The docs' code runs as written: each page's ``# tether:`` blocks become one module, its tests pass.

A page's blocks are executed in order as a module registered in ``sys.modules``
and used as ``ROOT_URLCONF``, so its ``urlpatterns`` serve its own tests; then
each ``test_*`` function the page defines is awaited here.
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import override_settings

from tests.servers import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

DOCS = ROOT / "docs"
PAGES = {
    "migrating-from-channels.md": ["test_chat", "test_anonymous_is_refused", "test_tutorial_rooms"],
    "faq.md": ["test_profile", "test_broken"],
    "testing.md": ["test_echo_and_broadcast", "test_nothing_arrives", "test_unknown_route"],
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
