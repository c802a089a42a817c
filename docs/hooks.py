"""Build helpers for mkdocs.yml.

`on_page_markdown` (an MkDocs hook): links from a page to files outside docs/ (benchmarks/RESULTS.md, examples/, the
README) work on the repository's web view but not in the built site. Each such link's target must
exist in the repository (a missing one is a warning, an error under `mkdocs build --strict`); in
the site the link points at the file under `repo_url` when mkdocs.yml sets one, and otherwise
becomes its text followed by the file's repository path.

`ExampleSections` (a griffe extension, for mkdocstrings): gradflow's docstrings head their
doctests "Example:", as the Google style guide does; griffe's Google parser knows only
"Examples:" as a code section and would render "Example:" as prose (`>>>` as block quotes).
Literal blocks introduced by "::" (reStructuredText's marker, "Example::") become fenced
Python code."""
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
    """Reads a docstring's "Example:" heading as "Examples:" and its "::" literal blocks as
    fenced code."""

    HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)

    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None:
            text = literal_blocks(obj.docstring.value)
            obj.docstring.value = self.HEADING.sub(r"\1Examples:", text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def literal_blocks(text: str) -> str:
    """Turns each "::"-introduced, more deeply indented block into a fenced code block.

    A marker alone on its line ("Example::") is a section heading: it becomes "Example:" and the
    fence keeps the block's indentation (the section's). A marker ending a sentence ("as the
    zoo's do::") becomes ":" and the block is fenced at the sentence's indentation.
    """
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if not line.rstrip().endswith("::") or line.lstrip().startswith((">>>", "...")):
            continue
        j = i
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j == len(lines) or _indent(lines[j]) <= _indent(line):
            continue  # no indented block follows
        end = j
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > _indent(line)):
            end += 1
        while not lines[end - 1].strip():
            end -= 1
        block = lines[j:end]
        heading = re.fullmatch(r"\s*\w[\w ]*::\s*", line) is not None
        out[-1] = line.rstrip()[:-1]
        if heading:
            pad = " " * _indent(lines[j])
            body = block
        else:
            pad = " " * _indent(line)
            cut = min(_indent(b) for b in block if b.strip())
            body = [pad + b[cut:] if b.strip() else "" for b in block]
            out.append("")
        out += [pad + "```python", *body, pad + "```"]
        i = end
    return "\n".join(out)
