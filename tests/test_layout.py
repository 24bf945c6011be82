"""The package's architecture stays as docs/design.md draws it: no import cycle anywhere (module-level, inside a
function, or through a module name in a string, as ``importlib.import_module`` takes), no module imports a layer
above its own, docs/design.md's table names every module, and no private name (``_x``) crosses a module boundary."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "robustify"

# lowest first; a module may import its own layer or any layer below it (the first matching prefix wins)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("robustify.version", "robustify.errors", "robustify.fileio", "robustify.input_grad",
              "robustify.runfolder", "robustify.hub_access", "robustify.sections")),
    ("shared", ("robustify.config", "robustify.attacks", "robustify.report", "robustify.runlock")),
    ("core", ("robustify.models", "robustify.data")),
    ("publish", ("robustify.publish",)),
    ("evaluate", ("robustify.evaluate",)),
    ("train", ("robustify.train",)),
    ("bench", ("robustify.bench", "robustify.recipes")),
    ("cli", ("robustify.cli", "robustify.__main__", "robustify")),  # the facade robustify/__init__ and the command
]


def import_target(node: ast.ImportFrom, mod: str, is_pkg: bool) -> str:
    """The absolute module a ``from ... import`` in module ``mod`` names (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(mod: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(mod == p or mod.startswith(p + ".") for p in prefixes if p != "robustify"):
            return i
    return len(LAYERS) - 1


def imports_of(mod: str) -> set[str]:
    """Every robustify module ``mod`` imports, at module level or inside functions (TYPE_CHECKING blocks too)."""
    path = MODULES[mod]
    return imports_in(path.read_text(), mod, path.name == "__init__.py")


def imports_in(source: str, mod: str, is_pkg: bool = False) -> set[str]:
    """The robustify modules ``source`` (the text of module ``mod``) imports: by ``import`` statements, and by any
    string that names a module of the package (``importlib.import_module("robustify.train.methods")``, a table of
    module names, ``sys.modules[...]``): a module reached by name is a dependency like any other."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("robustify."):
            out.add(node.value)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("robustify"))
        elif isinstance(node, ast.ImportFrom):
            target = import_target(node, mod, is_pkg)
            if not target.startswith("robustify"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in MODULES else target)
    return {m for m in out if m in MODULES and m != mod}


GRAPH = {m: imports_of(m) for m in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (as a path that ends where it starts), or None: a depth-first walk."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_layer_imports_a_higher_one() -> None:
    bad = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {n} ({LAYERS[layer_of(n)][0]})"
           for m, deps in sorted(GRAPH.items()) for n in sorted(deps) if layer_of(n) > layer_of(m)]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_cycles_and_function_level_imports() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None
    # cli imports the wings inside its functions only: the walk must see them
    assert {"robustify.train.trainer", "robustify.evaluate.report"} <= imports_of("robustify.cli")


def test_the_checker_sees_imports_through_strings_and_importlib() -> None:
    # what config.py did before the registries registered themselves (robustify/sections.py): a hidden config -> train
    source = ('import importlib\nOWNERS = {"method": "robustify.train.methods"}\n'
              'def f():\n    return importlib.import_module("robustify.data.sources")\n')
    assert imports_in(source, "robustify.config") == {"robustify.train.methods", "robustify.data.sources"}
    graph = dict(GRAPH) | {"robustify.config": GRAPH["robustify.config"] | imports_in(source, "robustify.config")}
    assert find_cycle(graph) is not None
    assert "robustify.runlock" in imports_of("robustify.cli")  # cli reads sys.modules["robustify.runlock"]


def test_design_md_names_every_module() -> None:
    """docs/design.md is the map: its tables name every module (by its path under robustify/; a package's
    ``__init__.py`` by its folder, ``data/``; a registry folder, ``train/methods/``, for every file in it), so a new
    module is placed, and said what it owns, when it is added."""
    text = (PACKAGE.parent / "docs" / "design.md").read_text()
    table = "\n".join(line for line in text.splitlines() if line.startswith("| "))
    missing = []
    for path in sorted(MODULES.values()):
        rel = path.relative_to(PACKAGE)
        folder = f"`{rel.parent.as_posix()}/`"
        named = f"`{rel.as_posix()}`" in table or (folder in table and (
            path.name == "__init__.py" or len(rel.parent.parts) >= 2))
        if not named:
            missing.append(rel.as_posix())
    assert not missing, f"modules docs/design.md's table does not name: {missing}"


def private_names_crossing(mod: str) -> list[str]:
    """``from .x import _y`` and ``x._y`` where ``x`` is a robustify module ``mod`` imported: a private name used
    outside its module (dunder names such as ``__version__`` are public)."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    bound: set[str] = set()  # local names of imported robustify modules
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = import_target(node, mod, is_pkg)
            if not target.startswith("robustify"):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    bad.append(f"{mod}:{node.lineno} imports {target}.{alias.name}")
                if f"{target}.{alias.name}" in MODULES:
                    bound.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            bound.update(a.asname or a.name for a in node.names if a.name.startswith("robustify"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            bad.append(f"{mod}:{node.lineno} uses {node.value.id}.{node.attr}")
    return bad


def test_no_private_name_crosses_a_module_boundary() -> None:
    bad = [b for m in sorted(MODULES) for b in private_names_crossing(m)]
    assert not bad, "private names used outside their module (make them public or move them):\n" + "\n".join(bad)


def test_every_module_says_what_it_owns_and_must_not_do() -> None:
    missing = [m for m, p in MODULES.items() if not ast.get_docstring(ast.parse(p.read_text()))
               and m != "robustify.__main__"]
    assert not missing, f"modules without a docstring: {missing}"
    # package __init__ files say what their wing may import instead
    silent = [m for m, p in MODULES.items() if p.name not in ("__init__.py", "__main__.py")
              and "Must not:" not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert not silent, f"modules whose docstring does not say what they must not do: {silent}"
