"""The package's shape: no import circles, no reaching into another module's
private names, and no stage importing a later one.

Imports inside functions count too: a deferred import is still a dependency,
it only hides the circle until the code path runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "zsplg"

# Pipeline order: a module may import its own stage and any earlier one.
STAGES = [
    ("zsplg.runtime", "zsplg.choices"),
    ("zsplg.data", "zsplg.metrics"),
    ("zsplg.masks", "zsplg.vl"),
    ("zsplg.labeling",),
    ("zsplg.calibration",),
    ("zsplg.evaluate", "zsplg.export", "zsplg.train"),
    ("zsplg.report", "zsplg.demo", "zsplg.pipeline"),
    ("zsplg.cli",),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module an import names: a package, a module, or a module's attribute."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every zsplg import."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("zsplg")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            if base.startswith("zsplg"):
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    found.append((full if full in MODULES else base, alias.name, node.lineno))
    return found


def _stage(module: str) -> int | None:
    for index, prefixes in enumerate(STAGES):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _name, _line in _imports(module):
            resolved = _resolve(target)
            if resolved and resolved != module and resolved != "zsplg":
                graph[module].add(resolved)
    return graph


def test_every_module_has_a_stage():
    loose = [m for m in MODULES if m not in ("zsplg", "zsplg.__main__") and _stage(m) is None]
    assert loose == [], f"modules outside the pipeline stages: {loose}"


def test_no_import_circle():
    graph = _graph()
    # Tarjan's strongly connected components: any component of 2+ modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert circles == [], f"import circles: {circles}"


def test_no_private_name_is_imported_from_another_module():
    offences = [f"{module}:{line} imports {name} from {target}"
                for module in MODULES
                for target, name, line in _imports(module)
                if name and name.startswith("_") and not name.startswith("__")
                and _resolve(target) != module]
    assert offences == []


def test_no_stage_imports_a_later_stage():
    offences = []
    for module in MODULES:
        own = _stage(module)
        if own is None:
            continue
        for target, _name, line in _imports(module):
            other = _stage(_resolve(target))
            if other is not None and other > own:
                offences.append(f"{module}:{line} imports {target}")
    assert offences == []


def test_library_code_never_prints():
    offences = []
    for module, path in MODULES.items():
        if module.startswith("zsplg.cli"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offences.append(f"{module}:{node.lineno} calls print()")
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [
                    a.name for a in node.names]
                if any(n == "rich" or n.startswith("rich.") for n in names):
                    offences.append(f"{module}:{node.lineno} imports rich")
    assert offences == []


def test_public_api_names_what_it_loads():
    import zsplg

    assert set(zsplg.__all__) == {"IGNORE_INDEX", "__version__", *zsplg._API}
    for name in zsplg._API:
        assert getattr(zsplg, name) is not None
