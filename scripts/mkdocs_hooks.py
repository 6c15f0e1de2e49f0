"""MkDocs hooks for the documentation site (mkdocs.yml ``hooks:``).

- The repository's own Markdown pages that docs/ links to (README.md as the *Guide*,
  CHANGELOG.md, bench/README.md) become pages of the site, under ``repo/`` (README.md as
  ``guide.md``), so the same text serves GitHub and the site.
- Links in any page to a file of the repository outside docs/ are rewritten: to the site's copy
  when there is one, else to the path in code style (``examples/chat``), since a site can't serve it.
- ``mkdocs build --strict`` fails on a public object of the API reference without a docstring
  (a method that overrides a documented one inherits its docstring and passes).
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

import griffe
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.tether")
ROOT = Path(__file__).resolve().parent.parent
# repository file -> its page on the site (a path under docs_dir)
REPO_PAGES = {"README.md": "guide.md", "CHANGELOG.md": "repo/CHANGELOG.md", "bench/README.md": "repo/bench/README.md"}
SOURCE_OF = {page: source for source, page in REPO_PAGES.items()}
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")
IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<target>[^)\s]+)\)")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for source, page in REPO_PAGES.items():
        files.append(File.generated(config, page, abs_src_path=str(ROOT / source)))
    return files


def _repo_path(page: Page, target: str) -> str:
    """The repository path a relative link of ``page`` points to."""
    source = SOURCE_OF.get(page.file.src_uri) or f"docs/{page.file.src_uri}"
    return posixpath.normpath(posixpath.join(posixpath.dirname(source), target))


def _site_link(page: Page, repo_path: str) -> str | None:
    """The link from ``page`` to the site's copy of ``repo_path``, or None when there is none."""
    if repo_path in REPO_PAGES:
        site_path = REPO_PAGES[repo_path]
    elif repo_path.startswith("docs/"):
        site_path = repo_path.removeprefix("docs/")
    else:
        return None
    return posixpath.relpath(site_path, posixpath.dirname(page.file.src_uri) or ".")


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    def link(match: re.Match[str]) -> str:
        target = match["target"]
        if re.match(r"[a-z]+:", target) or target.startswith("/"):
            return match[0]
        repo_path = _repo_path(page, target)
        site = _site_link(page, repo_path)
        if site is not None:
            return f"[{match['text']}]({site}{match['anchor'] or ''})"
        if not (ROOT / repo_path).exists():
            log.warning("%s links to %s, which is not in the repository", page.file.src_uri, target)
        text = match["text"]
        return text if text.strip("`") == repo_path or "`" in text else f"{text} (`{repo_path}`)"

    def image(match: re.Match[str]) -> str:
        target = match["target"]
        if re.match(r"[a-z]+:", target):
            return match[0]
        site = _site_link(page, _repo_path(page, target))
        return f"![{match['alt']}]({site or target})"

    return LINK.sub(link, IMAGE.sub(image, markdown))


# -- missing docstrings -----------------------------------------------------------------------

IDENTIFIER = re.compile(r"^::: ([\w.]+)", re.MULTILINE)


def _inherits_docstring(obj: griffe.Object | griffe.Alias) -> bool:
    parent = obj.parent
    if not isinstance(parent, griffe.Class):
        return False
    for base in parent.mro():
        member = base.members.get(obj.name)
        if member is not None and member.docstring:
            return True
    return False


def _undocumented(obj: griffe.Object | griffe.Alias) -> list[str]:
    """Paths of ``obj`` and its public members (recursively) that have no docstring."""
    target = obj.final_target if obj.is_alias else obj
    missing = [] if target.docstring or _inherits_docstring(target) else [obj.path]
    if target.is_class or target.is_module:
        for name, member in target.members.items():
            if name.startswith("_"):
                continue
            if member.is_alias and name not in (target.exports or ()):
                continue  # an import, documented where it is defined
            if member.is_attribute or (target.is_module and member.is_module):
                continue  # attributes are described by their class; a submodule has its own heading
            missing += _undocumented(member)
    return missing


def on_post_build(config: MkDocsConfig) -> None:
    reference = Path(config.docs_dir, "reference.md").read_text()
    loader = griffe.GriffeLoader(search_paths=[str(ROOT)])
    for identifier in IDENTIFIER.findall(reference):
        package = loader.load(identifier.split(".")[0])
        obj = package if identifier == package.path else package[identifier.split(".", 1)[1]]
        for path in _undocumented(obj):
            log.warning("API reference: %s has no docstring", path)
