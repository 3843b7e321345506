"""The house's rooms: imports go one way (commands -> orchestrator -> stages' domains -> faces)
and no module imports itself back through others, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "teachers", "students", "distill", "export", "privacy", "faces")

# The stages' domains, below everything in pipelines/.
DOMAINS = {"teachers", "students", "distill", "export", "privacy", "faces"}
# What each package (or pipelines sub-package) may import from the house, besides itself;
# pipelines.orchestration, pipelines.commands and pipelines.cli sit on top and may import any.
ALLOWED = {
    "faces": set(),
    "teachers": {"faces"},
    "students": {"faces"},
    "distill": {"faces", "teachers", "students"},
    "export": {"faces", "teachers", "students"},
    "privacy": {"faces"},
    "pipelines.core": DOMAINS,
    "pipelines.evaluation": DOMAINS | {"pipelines.core"},
    "pipelines.training": DOMAINS | {"pipelines.core", "pipelines.evaluation"},
    "pipelines.tracking": DOMAINS | {"pipelines.core"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def house_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if "__pycache__" not in p.parts
    }


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """House modules that ``path`` imports anywhere (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = house_modules()
    return {n: imports_of(p, n, set(modules)) for n, p in modules.items()}


def room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipelines" and len(parts) > 1 else parts[0]


def test_layers_import_downwards_only(graph: dict[str, set[str]]) -> None:
    wrong = []
    for module, deps in graph.items():
        allowed = ALLOWED.get(room(module))
        if allowed is None:
            continue  # orchestration, commands, cli: the top may import any room
        for dep in deps:
            target = room(dep)
            if target != room(module) and not any(
                target == a or target.startswith(a + ".") for a in allowed
            ):
                wrong.append(f"{module} imports {dep}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    # Package __init__ files are left out of the walk: importing a.b.c runs a/__init__ first,
    # which is no cycle unless the __init__ imports back (checked by their own edges).
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


def test_the_rooms_exist() -> None:
    for sub in ("core", "orchestration", "training", "evaluation", "tracking", "commands"):
        assert (ROOT / "pipelines" / sub / "__init__.py").is_file(), sub
    assert (ROOT / "privacy" / "__init__.py").is_file()
    assert not (ROOT / "faces" / "privacy").exists()
    loose = sorted(p.name for p in (ROOT / "pipelines").glob("*.py"))
    assert loose == ["__init__.py", "cli.py"], loose
