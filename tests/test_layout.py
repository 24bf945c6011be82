"""The package's architecture stays as docs/design.md draws it: no import cycle anywhere (module-level or inside a
function), and no module imports a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "robustify"

# lowest first; a module may import its own layer or any layer below it (the first matching prefix wins)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("robustify.version", "robustify.errors", "robustify.fileio", "robustify.input_grad",
              "robustify.runfolder", "robustify.hub_access")),
    ("shared", ("robustify.config", "robustify.attacks", "robustify.report", "robustify.runlock")),
    ("core", ("robustify.models", "robustify.data")),
    ("publish", ("robustify.publish",)),
    ("evaluate", ("robustify.evaluate",)),
    ("train", ("robustify.train",)),
    ("bench", ("robustify.bench", "robustify.recipes")),
    ("cli", ("robustify.cli", "robustify.__main__", "robustify")),  # the facade robustify/__init__ and the command
]


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
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("robustify"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
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


def test_every_module_says_what_it_owns_and_must_not_do() -> None:
    missing = [m for m, p in MODULES.items() if not ast.get_docstring(ast.parse(p.read_text()))
               and m != "robustify.__main__"]
    assert not missing, f"modules without a docstring: {missing}"
    # package __init__ files say what their wing may import instead
    silent = [m for m, p in MODULES.items() if p.name not in ("__init__.py", "__main__.py")
              and "Must not:" not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert not silent, f"modules whose docstring does not say what they must not do: {silent}"
