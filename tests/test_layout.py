"""The package's layout as the README draws it: no import cycle between llb's modules (imports inside functions
included, since they only defer a cycle), and argparse only in the command-line faces."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LLB = Path(__file__).resolve().parents[1] / "llb"
# Modules that parse command lines: the CLI and its commands; every other module takes typed arguments.
COMMAND_FACES = ("cli", "commands")


def module_name(path: Path) -> str:
    parts = path.relative_to(LLB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The llb modules that `path` imports (resolved relative imports; `from pkg import name` counts as the
    submodule pkg.name where that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("llb")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("llb"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in LLB.rglob("*.py")}
    return {m: {t for t in imports(p) if t in modules and t != m} for m, p in modules.items()}


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1 and not node.startswith(nxt + ".") and not nxt.startswith(node + "."):
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def imports_argparse(path: Path) -> bool:
    """Whether `path` imports argparse (`import argparse` or `from argparse import ...`, at any depth)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "argparse":
            return True
    return False


def test_argparse_only_in_command_faces() -> None:
    offenders = [
        module_name(p)
        for p in LLB.rglob("*.py")
        if imports_argparse(p) and module_name(p).split(".")[1] not in COMMAND_FACES
    ]
    assert not offenders, f"argparse in library modules: {offenders}"
    assert imports_argparse(LLB / "cli.py"), "the check must see the CLI's own import"
