"""The layer rule of ARCHITECTURE.md, checked on the source: every nte_eval import points to a lower layer (or within
its own package), siblings do not import each other, no import sits inside a function, and there is no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nte_eval

ROOT = Path(nte_eval.__file__).parent

# Lowest first. A module may import modules of lower layers and of its own package; never of a higher layer or a
# sibling on its own layer.
LAYERS: list[set[str]] = [
    {"errors", "__init__"},
    {"params", "registry", "metrics", "knowledge", "progress"},
    {"geometry"},
    {"data"},
    {"models"},
    {"encoders"},
    {"attacks"},
    {"evaluate"},
    {"certify", "reports", "cluster"},
    {"runner", "export"},
    {"cli"},
]
MAX_LINES = 400
# The command line is the top: nothing imports it, so its function-level imports dodge no cycle. It imports each
# command's layers when that command runs, so that `nte-eval --help` and `nte-eval list` start in milliseconds.
LAZY_OK = {"cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def unit(module: str) -> str:
    """The layer unit of a module: its top-level package or module below ``nte_eval`` (``__init__`` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int:
    name = unit(module)
    for i, units in enumerate(LAYERS):
        if name in units:
            return i
    raise AssertionError(f"{module}: its folder/module {name!r} is in no layer of ARCHITECTURE.md; add it there")


def imports(path: Path, known: dict[str, Path], here: str | None = None) -> list[tuple[str, int, bool]]:
    """(imported nte_eval module, line, inside a function) for every import statement of the file ``here``."""
    tree = ast.parse(path.read_text())
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    here = here or module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            if target == "nte_eval" or target.startswith("nte_eval."):
                while target not in known and "." in target:
                    target = target.rpartition(".")[0]
                out.append((target, node.lineno, id(node) in in_function))
    return out


def graph() -> dict[str, list[tuple[str, int, bool]]]:
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def test_imports_point_down_and_never_sit_in_functions():
    """Every nte_eval import points down (or within its folder); none sits in a function (the CLI aside)."""
    problems = []
    for module, edges in graph().items():
        for target, line, nested in edges:
            if target == module:
                continue
            where = f"{module} (line {line}) imports {target}"
            if nested and unit(module) not in LAZY_OK:
                problems.append(f"{where} inside a function: import at the top (a cycle it dodges is a design bug)")
            if target == "nte_eval" and module != "nte_eval":
                continue  # the package's version string
            same_unit = unit(module) == unit(target)
            if not same_unit and layer(target) >= layer(module):
                kind = "a sibling" if layer(target) == layer(module) else "a higher layer"
                problems.append(f"{where}: {kind} ({unit(target)} is layer {layer(target)}, {unit(module)} is layer "
                                f"{layer(module)})")
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    edges = {m: {t for t, _, _ in e if t != m} for m, e in graph().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                cycle = visit(t)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_modules_stay_small():
    big = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by concept): {big}"


@pytest.mark.parametrize("layer_units", LAYERS)
def test_every_layer_unit_exists(layer_units):
    """The layer table names real folders/modules (a rename must update ARCHITECTURE.md and this test)."""
    missing = layer_units - {unit(m) for m in modules()}
    assert not missing, f"{sorted(missing)} named in the layer table but not under nte_eval/"


def test_the_check_catches_an_upward_import(tmp_path):
    """The checker itself: a lower module importing a higher one, or importing inside a function, is reported."""
    (tmp_path / "x.py").write_text("from nte_eval.runner import run_suite\n\ndef f():\n    import nte_eval.cli\n")
    found = imports(tmp_path / "x.py", modules(), here="nte_eval.geometry.x")
    assert ("nte_eval.runner", 1, False) in found and ("nte_eval.cli", 4, True) in found
    assert layer("nte_eval.runner") > layer("nte_eval.geometry.x")
