"""Documentation references: every ``docs/<file>.md`` or ``docs/<file>.md, <Section>`` mentioned in the
repository's .py / .yaml / .md files names an existing file (and a heading of it), Markdown links between
the docs resolve, and nothing points to the background notes users do not have.

Reference convention: the section follows the file after ", ", starts with a capital letter and runs to
the first ``)``, ``]``, ``;``, ``:``, ``.``, ``,``, quote, backtick or line end; it must equal a heading.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SUFFIXES = (".py", ".yaml", ".yml", ".md")
# Built from parts so that this file does not contain the names it forbids.
FORBIDDEN = ("DESIGN" + ".md", "METRICS_SPEC" + ".md")
_SKIP_DIRS = {".git", ".venv", "venv", "checkpoints", "outputs", "multirun", "logs", "wandb", ".cache",
              "cache", "__pycache__"}

REFERENCE = re.compile(r"(?<![\w/.-])docs/([\w-]+\.md)(?:, ([A-Z][^\n)\];:.,\"'`]*))?")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def repo_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored text files of the kinds that can hold references."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.split("\n")
        files = [REPO / line for line in out if line]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an unpacked sdist)
        files = [p for p in REPO.rglob("*") if not _SKIP_DIRS & set(p.relative_to(REPO).parts)]
    return sorted(p for p in files if p.suffix in SUFFIXES and p.is_file())


def headings(path: Path) -> list[str]:
    """Heading texts of a Markdown file, ignoring fenced code blocks."""
    found, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            found.append(m.group(1))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens kept), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", ""))
    return text.replace(" ", "-")


def bad_references(text: str, docs_dir: Path) -> list[str]:
    """The references in ``text`` that name a missing docs file or a heading that file does not have."""
    bad = []
    for m in REFERENCE.finditer(text):
        name, section = m.group(1), (m.group(2) or "").strip()
        target = docs_dir / name
        if not target.is_file():
            bad.append(f"docs/{name} (no such file)")
        elif section and section not in headings(target):
            bad.append(f"docs/{name}, {section} (no such heading)")
    return bad


def test_docs_exist_with_headings() -> None:
    for name in ("design.md", "metrics.md"):
        assert headings(DOCS / name), f"docs/{name} is missing or has no headings"


def test_every_docs_reference_points_to_a_file_and_heading() -> None:
    problems = {}
    count = 0
    for path in repo_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        count += len(REFERENCE.findall(text))
        if bad := bad_references(text, DOCS):
            problems[str(path.relative_to(REPO))] = bad
    assert not problems, problems
    assert count >= 30, f"only {count} docs references found: is the scan missing files?"


def test_no_reference_to_background_notes() -> None:
    offenders = [f"{p.relative_to(REPO)}: {name}" for p in repo_files()
                 for name in FORBIDDEN if name in p.read_text(encoding="utf-8", errors="replace")]
    assert not offenders, offenders


@pytest.mark.parametrize("name", ["design.md", "metrics.md"])
def test_markdown_links_between_docs_resolve(name: str) -> None:
    """Relative links and ``#anchor`` links in docs/*.md reach an existing file and heading."""
    source = DOCS / name
    bad = []
    for target in LINK.findall(source.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        file_part, _, anchor = target.partition("#")
        path = (source.parent / file_part) if file_part else source
        if not path.is_file() or (anchor and anchor not in {slug(h) for h in headings(path)}):
            bad.append(target)
    assert not bad, f"docs/{name}: broken links {bad}"


def test_checker_reports_missing_files_and_headings(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## Stage II\n\n```\n# not a heading\n```\n", encoding="utf-8")
    d = "docs" + "/"  # split so that the repository scan does not see these made-up references
    text = (f"ok ({d}a.md, Stage II). ok {d}a.md, then prose. bad ({d}a.md, Stage III); "
            f"bad {d}b.md; bad ({d}a.md, Not a heading). not a reference: mydocs/b.md, src/docs/b.md.")
    assert bad_references(text, tmp_path) == [
        f"{d}a.md, Stage III (no such heading)",
        f"{d}b.md (no such file)",
        f"{d}a.md, Not a heading (no such heading)",
    ]
    assert slug("Stage-I loss") == "stage-i-loss"
    assert slug("Pairs and the DataModule") == "pairs-and-the-datamodule"
