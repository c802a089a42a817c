"""Build helpers for mkdocs.yml.

`on_page_markdown` (an MkDocs hook): links from a page to files outside docs/ (benchmarks/RESULTS.md, examples/, the
README) work on the repository's web view but not in the built site. Each such link's target must
exist in the repository (a missing one is a warning, an error under `mkdocs build --strict`); in
the site the link points at the file under `repo_url` when mkdocs.yml sets one, and otherwise
becomes its text followed by the file's repository path.

`ExampleSections` (a griffe extension, for mkdocstrings): gradflow's docstrings head their
doctests "Example:", as the Google style guide does; griffe's Google parser knows only
"Examples:" as a code section and would render "Example:" as prose (`>>>` as block quotes)."""
from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

import griffe

log = logging.getLogger("mkdocs.plugins.gradflow_links")

# [text](target) where the target is relative and climbs out of the page's folder
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<target>\.\./[^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def on_page_markdown(markdown, page, config, files):
    docs = Path(config["docs_dir"]).resolve()
    root = docs.parent
    page_dir = posixpath.dirname(page.file.src_uri)
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def rewrite(m):
        target = m.group("target")
        path, _, anchor = target.partition("#")
        rel = posixpath.normpath(posixpath.join("docs", page_dir, path))
        if not rel.startswith("docs/") and not rel.startswith("../"):
            if not (root / rel).exists():
                log.warning("Doc file '%s' links to '%s', which is not in the repository",
                            page.file.src_uri, target)
                return m.group(0)
            if repo_url:
                kind = "tree" if (root / rel).is_dir() else "blob"
                return f"[{m.group('text')}]({repo_url}/{kind}/main/{rel}" + \
                       (f"#{anchor}" if anchor else "") + ")"
            text = m.group("text")
            return f"`{rel}`" if text.strip("`") == rel else f"{text} (`{rel}` in the repository)"
        return m.group(0)

    out, fenced = [], False
    for line in markdown.split("\n"):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        out.append(line if fenced else LINK.sub(rewrite, line))
    return "\n".join(out)


class ExampleSections(griffe.Extension):
    """Reads a docstring's "Example:" heading as "Examples:"."""

    HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)

    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = self.HEADING.sub(r"\1Examples:", obj.docstring.value)
