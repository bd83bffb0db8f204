"""The tiers of the repository: plain-torch packages import no Lightning, and imports form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sgdfuse", "lightning_modules", "datamodules")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules imported by ``path`` (``top_level_only``: at import time, not inside functions)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            known = submodules & _MODULES
            # `from pkg import sub` depends on pkg.sub (pkg is already initialising), not on pkg's names
            found.update(known if known == submodules else {node.module, *submodules})
    return found


def _project_files() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


_MODULES = set(_project_files())


@pytest.mark.parametrize("tier", ["sgdfuse.models", "sgdfuse.data", "sgdfuse.masks", "sgdfuse.metrics",
                                  "sgdfuse.losses", "sgdfuse.color"])
def test_plain_torch_tiers_import_no_lightning(tier):
    files = {m: p for m, p in _project_files().items() if m == tier or m.startswith(tier + ".")}
    assert files, tier
    for module, path in files.items():
        bad = {i for i in _imports(path, top_level_only=False)
               if i.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_modules", "datamodules")
               or i.startswith("sgdfuse.orchestration")}
        assert not bad, f"{module} imports {sorted(bad)}"


def test_module_level_imports_form_no_cycle():
    files = _project_files()
    graph = {m: {i for i in _imports(p, top_level_only=True) if i in files and i != m}
             for m, p in files.items()}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep] if dep in stack else [module, dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*stack, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
