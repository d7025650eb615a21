"""The package's import structure (ARCHITECTURE.md, "Dependencies point one way").

Read from the source with ``ast`` (imports inside functions count; ``if TYPE_CHECKING:``
blocks do not, as they never run): stages import only what stands below them, no two
modules import each other (directly or round a longer loop), and no module imports
another module's underscore names.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "wsi_mil"

#: Lowest first. A module may import its own layer and the layers before it.
LAYERS = (
    # shared ground: errors, config, the run folder's layout, readers, stores, manifest, Dask
    (
        "errors",
        "registry",
        "stats",
        "config",
        "run_layout",
        "device",
        "io",
        "store",
        "manifest",
        "parallel",
        "time_limit",
        "progress",
        "geojson",
        "synthetic",
        "datasets",
        "",
    ),
    ("tiling",),
    ("features",),
    ("mil",),
    ("explain",),
    (
        "pipeline_config",
        "pipeline_resume",
        "pipeline",
        "demo",
        "demo_cohort",
        "demo_tissue",
        "view",
        "cli",
        "cli_options",
        "cli_common",
        "cli_prepare",
        "cli_train",
        "cli_explain",
        "cli_run",
        "__main__",
    ),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) of every wsi_mil import that runs."""
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "wsi_mil":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in MODULES:  # from wsi_mil.explain import heatmap
                    found.append((submodule, None, node.lineno))
                else:
                    found.append((str(node.module), alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "wsi_mil"]
    return found


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    for index, names in enumerate(LAYERS):
        if part in names:
            return index
    raise AssertionError(f"{module}: not in any layer of LAYERS; add its top-level name there")


def test_every_module_is_placed_in_a_layer() -> None:
    assert len(MODULES) > 50
    for module in MODULES:
        _layer(module)


def test_stages_import_only_downward() -> None:
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)}), line {line}"
        for module, imports in GRAPH.items()
        for target, _, line in imports
        if target in MODULES and _layer(target) > _layer(module)
    ]
    assert not upward, "imports against the dependency order:\n" + "\n".join(upward)


def test_mil_never_imports_explain() -> None:
    offending = [
        module
        for module, imports in GRAPH.items()
        if module.startswith("wsi_mil.mil")
        for target, _, _ in imports
        if target.startswith("wsi_mil.explain")
    ]
    assert not offending


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _is_registration(cycle: list[str]) -> bool:
    """A registry and the modules it fills: each entry module imports the registry's decorator, and
    the registry imports them (inside a function) to register the built-ins. Any other loop is a cycle."""
    registries = [m for m in cycle if m.rsplit(".", 1)[-1] == "registry"]
    return len(registries) == 1 and all(
        registries[0] in {t for t, _, _ in GRAPH[m]} for m in cycle if m != registries[0]
    )


def test_no_import_cycles() -> None:
    edges = {
        module: {target for target, _, _ in imports if target in MODULES and target != module}
        for module, imports in GRAPH.items()
    }
    cycles = [cycle for cycle in _cycles(edges) if not _is_registration(cycle)]
    assert not cycles, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_cycle_check_finds_a_cycle() -> None:
    """The check itself: a loop of three modules is found, a chain is not."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_private_names_imported_across_modules() -> None:
    private = [
        f"{module} imports {name} from {target}, line {line}"
        for module, imports in GRAPH.items()
        for target, name, line in imports
        if name and name.startswith("_") and not name.startswith("__") and target != module
    ]
    assert not private, "underscore names used outside their module:\n" + "\n".join(private)


def test_lower_layers_import_without_the_stages_above() -> None:
    """Importing every module of the stages below explain, in a fresh interpreter, loads nothing of explain,
    the pipeline, the CLI or the viewer."""
    import os
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, sys\n"
        "for name in ('wsi_mil.store', 'wsi_mil.io', 'wsi_mil.tiling', 'wsi_mil.features', 'wsi_mil.mil'):\n"
        "    package = importlib.import_module(name)\n"
        "    for m in pkgutil.iter_modules(package.__path__): importlib.import_module(f'{name}.{m.name}')\n"
        "print(' '.join(sorted(n for n in sys.modules if n.startswith(('wsi_mil.explain', 'wsi_mil.pipeline', "
        "'wsi_mil.cli', 'wsi_mil.view', 'wsi_mil.demo')))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)},
    )
    assert result.stdout.strip() == "", f"the lower stages load {result.stdout.strip()}"


def test_no_module_is_over_400_lines() -> None:
    """Small files with names that say what they hold: a module that grows past 400 lines is split."""
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 400}
    assert not long, f"split these modules: {long}"
