"""The README's Quickstart, followed literally on a fresh machine, ends with its test passing.

The Quickstart section is turned into one shell script, block by block, in order:
a ``bash`` block is pasted as it is; a file block (its first line ``# path`` or
``# path: note``) writes that file, relative to the project directory, or adds
to its end when the note says ``add at the end``. The script runs in an empty
directory holding a copy of this checkout as ``django-tether/``, with a new
terminal's environment (no virtualenv, no ``DJANGO_SETTINGS_MODULE``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.checkout import copy_checkout, run
from tests.servers import ROOT

pytestmark = pytest.mark.slow

BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
HEADER = re.compile(r"#\s*(?P<path>[\w./-]+\.(?:py|ini|toml|cfg))(?::\s*(?P<note>.*))?$")


def quickstart(readme: str) -> str:
    """The text of the README's Quickstart section."""
    start = readme.index("## Quickstart")
    end = readme.index("\n## ", start + 1)
    return readme[start:end]


def as_script(section: str) -> str:
    """The section's code blocks as one bash script (see the module docstring)."""
    lines = ["set -euo pipefail"]
    for lang, body in BLOCK.findall(section):
        if lang == "bash":
            lines.append(body)
            continue
        header = HEADER.match(body.splitlines()[0])
        assert header, f"a {lang} block in the Quickstart doesn't start with '# <file>': {body[:80]!r}"
        append = (header["note"] or "").startswith("add at the end")
        lines.append(
            f"cat {'>>' if append else '>'} {shlex.quote(header['path'])} <<'QUICKSTART_EOF'\n{body}QUICKSTART_EOF"
        )
    return "\n".join(lines) + "\n"


def test_script_covers_every_block() -> None:
    """Each code block of the Quickstart is in the script, the settings block as an addition, and
    the last command is the README's test command."""
    section = quickstart((ROOT / "README.md").read_text())
    script = as_script(section)
    assert len(BLOCK.findall(section)) == script.count("QUICKSTART_EOF") // 2 + section.count("```bash")
    assert "cat >> mysite/settings.py" in script
    assert "cat > mysite/urls.py" in script and "cat > pytest.ini" in script and "cat > test_echo.py" in script
    assert script.rstrip().endswith("pytest")


def test_quickstart_runs_as_written(tmp_path: Path) -> None:
    """Fresh virtualenv, ``pip install ./django-tether``, startproject, the README's files, then
    ``pytest``: the echo test passes, with no warning."""
    copy_checkout(tmp_path / "django-tether")
    script = tmp_path / "quickstart.sh"
    script.write_text(as_script(quickstart((ROOT / "README.md").read_text())))
    output = run(["bash", str(script)], cwd=tmp_path)
    summary = output.strip().splitlines()[-1]
    assert re.fullmatch(r"=+ 1 passed in [\d.]+s =+", summary), output[-3000:]
    project = tmp_path / "mysite"
    assert (project / "manage.py").exists() and (project / "test_echo.py").exists()
    assert 'INSTALLED_APPS = ["tether", *INSTALLED_APPS]' in (project / "mysite" / "settings.py").read_text()


def test_every_install_line_of_the_docs_installs_from_a_checkout() -> None:
    """No code block in the README or docs/ tells to ``pip install django-tether`` from an index
    (it isn't on one yet): each install names the checkout (``./django-tether``) or its wheel."""
    offending = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for _, body in BLOCK.findall(page.read_text()):
            for line in body.splitlines():
                if "pip install" in line and re.search(r"(?<![./\w-])django-tether(?![/\w-])", line):
                    offending.append(f"{page.relative_to(ROOT)}: {line.strip()}")
    assert offending == []
