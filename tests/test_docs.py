"""The facts the code cites are in the repository.

Code, tests, scripts, configs and the README cite documents as `docs/<name>.md`, often with a
section (`docs/official-release.md 3.2`, `docs/benchmark-scoring.md, section 4`). This test fails
when such a file is not in `docs/`, when a cited section number is not a heading of that file, when
a citation still uses a name of the notes the project was started from (which lived beside the
checkout, not in it), and when a file reads a path outside the repository.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED = ("src", "tests", "scripts", "configs", "README.md", "pyproject.toml")
SUFFIXES = {".py", ".sh", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini"}
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".cache"}
THIS_FILE = Path(__file__).resolve()

# the notes beside the first checkout; what the code needs from them is now under docs/
OLD_NAMES = ("model-facts.md", "benchmark-scoring.md", "server-hardening.md", "peers.md",
             "STYLE.md", "DESIGN.md")
_OLD = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*)(?:" + "|".join(map(re.escape, OLD_NAMES)) + r")")


def old_names(line: str) -> list[str]:
    """Mentions of the old notes' names, except as `docs/<name>` (a file of this repository)."""
    return [m.group(0) for m in _OLD.finditer(line) if m.group(1) != "docs/"]


OUTSIDE = re.compile(r"/work/|\.\./shared\b|\bshared/(?:reference|STYLE|DESIGN)|\breference/[\w-]+\.md")
ABSOLUTE_PATH = re.compile(r"""\b(?:Path|open)\(\s*[rbf]?["'](/[^"']*)["']""")
SYSTEM_DIRS = {"proc", "sys", "dev", "etc", "tmp"}  # read as the machine's own, not as documents

DOC_REF = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.\w+)")
NUMBER = r"\d+(?:\.\d+)*(?![\d\w])"
SECTIONS = re.compile(r"`?,?\s+(?:sections?\s+|§\s*)?(" + NUMBER + r")"
                      r"((?:\s*(?:,\s*and|,|and|to|/)\s*" + NUMBER + r")*)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.M)


def scanned_files() -> list[Path]:
    out = []
    for name in SCANNED:
        top = ROOT / name
        if top.is_file():
            out.append(top)
            continue
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info"))
            out += [Path(folder) / f for f in sorted(files) if Path(f).suffix in SUFFIXES]
    return [p for p in out if p.resolve() != THIS_FILE]


def lines_of(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return []
    return list(enumerate(text.splitlines(), 1))


def headings(doc: Path) -> set[str]:
    return set(HEADING.findall(doc.read_text(encoding="utf-8")))


def cited_sections(line: str, end: int) -> list[str]:
    """The section numbers written right after a citation that ends at `end` in `line`."""
    m = SECTIONS.match(line, end)
    if not m:
        return []
    return [m.group(1)] + re.findall(NUMBER, m.group(2))


def citations() -> list[tuple[str, str, list[str]]]:
    """(where, the cited file, its cited sections) for every `docs/...` reference."""
    found = []
    for path in scanned_files():
        for number, line in lines_of(path):
            for m in DOC_REF.finditer(line):
                found.append((f"{path.relative_to(ROOT)}:{number}", m.group(1), cited_sections(line, m.end())))
    return found


def test_the_scan_sees_the_citations():
    cited = {name for _, name, _ in citations()}
    # the code cites these (a scan that found nothing would pass vacuously)
    assert {"official-release.md", "benchmark-scoring.md", "published-numbers.md",
            "server-security.md"} <= cited


def test_every_cited_doc_and_section_exists():
    problems = []
    for where, name, sections in citations():
        doc = DOCS / name
        if not doc.is_file():
            problems.append(f"{where}: docs/{name} is not in the repository")
            continue
        if doc.suffix == ".md":
            known = headings(doc)
            problems += [f"{where}: docs/{name} has no section {s}" for s in sections if s not in known]
    assert not problems, "\n".join(problems)


def test_no_citation_of_the_old_notes_or_of_paths_outside_the_repository():
    problems = []
    for path in scanned_files():
        for number, line in lines_of(path):
            where = f"{path.relative_to(ROOT)}:{number}"
            problems += [f"{where}: cites {name!r}, a note outside the repository; cite its docs/ copy"
                         for name in old_names(line)]
            problems += [f"{where}: {m.group(0)!r} is outside the repository" for m in OUTSIDE.finditer(line)]
            for m in ABSOLUTE_PATH.finditer(line):
                if m.group(1).split("/")[1] not in SYSTEM_DIRS:
                    problems.append(f"{where}: reads {m.group(1)!r}, outside the repository")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("line,sections", [
    ("see docs/official-release.md 3.2.", ["3.2"]),
    ("(docs/official-release.md 2.1 and 2.2)", ["2.1", "2.2"]),
    ("`docs/official-release.md` section 5", ["5"]),
    ("docs/benchmark-scoring.md (sections 3.2 to 3.5)", []),
    ("docs/benchmark-scoring.md, section 4.", ["4"]),
    ("docs/benchmark-scoring.md sections 3.2 to 3.5", ["3.2", "3.5"]),
    ("(docs/official-release.md 1.1, and 0, item 1)", ["1.1", "0"]),
    ("docs/official-release.md section 0, item 4", ["0"]),
    ("docs/bench-cpu.json is the authority", []),
])
def test_section_numbers_are_read_from_the_citation(line, sections):
    m = DOC_REF.search(line)
    assert cited_sections(line, m.end()) == sections


def test_old_names_and_outside_paths_are_caught():
    assert old_names("the checklist of model-facts.md section 8") == ["model-facts.md"]
    assert old_names("in shared/reference/benchmark-scoring.md") == ["shared/reference/benchmark-scoring.md"]
    assert old_names("in docs/benchmark-scoring.md, and docs/official-release.md") == []
    assert OUTSIDE.search('Path("/work/shared/reference/peers.md")')
    assert ABSOLUTE_PATH.search('PEERS = Path("/work/shared/reference/peers.md")').group(1).startswith("/work/")
    assert ABSOLUTE_PATH.search('Path("/proc/self/maps")').group(1).split("/")[1] in SYSTEM_DIRS
