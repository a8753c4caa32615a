"""The package's shape: the import graph between top-level packages and modules has no cycle, and the
README's Layout section names every one of them (a newcomer finds each part by its job there)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "src" / "omnivision"


def top_level_parts() -> set[str]:
    """Every package (folder with `__init__.py`) and module directly under `src/omnivision`."""
    parts = {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    return parts | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def imported_parts(source: Path) -> set[str]:
    """The top-level parts of `omnivision` that a file imports (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("omnivision.")}
    return found


def import_graph() -> dict[str, dict[str, list[str]]]:
    """part -> imported part -> the files of `part` that import it."""
    parts = top_level_parts()
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for source in PACKAGE.rglob("*.py"):
        rel = source.relative_to(PACKAGE)
        part = rel.parts[0].removesuffix(".py")
        if part not in parts:
            continue
        for target in imported_parts(source) & parts - {part}:
            graph[part][target].append(str(rel))
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b": ["a/x.py"]}, "b": {"c": ["b/y.py"]}, "c": {"a": ["c/z.py"]}, "d": {"a": ["d.py"]}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    del graph["c"]["a"]
    assert find_cycle(graph) is None


def test_no_import_cycle_between_top_level_parts():
    graph = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        links = [f"{a} -> {b} ({', '.join(sorted(graph[a][b]))})" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle: " + "; ".join(links))


def test_model_imports_only_config_and_kernel_choice():
    """The model is pure tensors: nothing above it (weights, generation, the API) leaks in."""
    assert set(import_graph()["model"]) <= {"config", "kernels"}


def layout_section() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n(.*?)(?=^## )", readme, re.S | re.M)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def layout_order() -> list[str]:
    """The top-level parts in the order the README's Layout lists them (bottom of the stack first)."""
    parts, order = top_level_parts(), []
    for name in re.findall(r"^  (\w+)(?:/|\.py)", layout_section(), re.M):
        if name in parts and name not in order:
            order.append(name)
    return order


def test_every_import_goes_down_the_readme_stack():
    """The Layout lists the parts bottom up: a part imports only parts listed before it."""
    rank = {name: n for n, name in enumerate(layout_order())}
    graph = import_graph()
    upward = [f"{a} -> {b} ({', '.join(sorted(files))})" for a, targets in graph.items()
              for b, files in targets.items() if a in rank and b in rank and rank[b] > rank[a]]
    assert not upward, "imports up the stack: " + "; ".join(sorted(upward))


def test_readme_layout_names_every_top_level_part():
    layout = layout_section()
    missing = top_level_parts() - set(layout_order())
    assert not missing, f"README Layout does not name: {sorted(missing)}"
    stale = {n for n in re.findall(r"^  (\w+)(?:/|\.py)", layout, re.M)} - top_level_parts()
    assert not stale, f"README Layout names parts that do not exist: {sorted(stale)}"


DECODING = {"omnivision.model", "omnivision.generation.generate", "omnivision.generation.sampling",
            "omnivision.generation.text_stream"}


def test_serve_answers_through_the_python_api():
    """`serve/` admits, queues, checks and streams: prompts, the model and the decoding loop are
    reached through `OmniVision` only."""
    found = []
    for source in (PACKAGE / "serve").rglob("*.py"):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                if any(name == m or name.startswith(m + ".") for name in imported for m in DECODING):
                    found.append(f"{source.name}: from {node.module} import ...")
                if any(a.name in ("build_inputs", "render", "generate", "generate_steps") for a in node.names):
                    found.append(f"{source.name}: imports {[a.name for a in node.names]}")
            if isinstance(node, ast.Attribute) and node.attr in ("model", "image_processor", "image_cache") \
                    and _names_the_api_object(node.value):
                found.append(f"{source.name}:{node.lineno}: vlm.{node.attr}")
    assert not found, found


def _names_the_api_object(node: ast.expr) -> bool:
    """`vlm` or `<something>.vlm`: the `OmniVision` object, whose insides serve/ must not reach."""
    return isinstance(node, ast.Name) and node.id == "vlm" or isinstance(node, ast.Attribute) and node.attr == "vlm"
