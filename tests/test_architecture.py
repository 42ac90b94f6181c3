"""The package's structure: floors along the data path, imports only downward, no cycles.

Every import is parsed, including those inside functions and under ``TYPE_CHECKING``: a
function-level import that dodges a cycle is still a cycle. The floors, bottom to top, are
documented in ``docs/architecture.md``. A floor holds one package or several *sibling* packages
that do not import each other (training, search and transfer all stand on the objective, and
none needs another). A module may import its own package and any package on a lower floor;
never a sibling, never a package above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The package root: it only re-exports the errors and the version. It is matched exactly (a new
#: top-level module must be placed on a floor explicitly).
ROOT_PACKAGE = "autoprune"

# Bottom to top; each floor is a tuple of sibling packages (or top-level modules). A module
# belongs to the longest entry that is its name or a package holding it.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("autoprune.errors",),
    (ROOT_PACKAGE, "autoprune.paths", "autoprune.registry"),
    ("autoprune.zoo",),
    ("autoprune.graph",),
    ("autoprune.formats",),
    ("autoprune.measure",),
    ("autoprune.objective",),
    ("autoprune.training", "autoprune.search", "autoprune.transfer"),
    ("autoprune.config",),
    ("autoprune.tracking",),
    ("autoprune.app", "envs"),
    ("autoprune.cli",),
    ("autoprune.__main__",),
)

#: The largest module, in lines: one responsibility per module.
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    files = sorted((ROOT / "autoprune").rglob("*.py")) + sorted((ROOT / "envs").rglob("*.py"))
    return {_module_name(p): p for p in files}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that ``module`` imports, anywhere in its body."""
    found: set[str] = set()

    def add(name: str) -> None:
        # `from pkg import sub` names a module when pkg.sub is one.
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in known else base)
    return found


def _place(module: str, floors: tuple[tuple[str, ...], ...] = FLOORS) -> tuple[int, str] | None:
    """``(floor, entry)`` of a module: the longest entry that is its name or a package holding it."""
    best: tuple[int, str] | None = None
    for index, entries in enumerate(floors):
        for entry in entries:
            holds = module == entry or (entry != ROOT_PACKAGE and module.startswith(entry + "."))
            if holds and (best is None or len(entry) > len(best[1])):
                best = (index, entry)
    return best


def layering_violations(graph: dict[str, set[str]], floors: tuple[tuple[str, ...], ...] = FLOORS) -> list[str]:
    """Each import that goes up a floor or across to a sibling package, as ``"a (floor) -> b (floor)"``."""
    out = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = _place(module, floors), _place(target, floors)
            if a is None or b is None:
                continue
            if b[0] > a[0]:
                out.append(f"{module} ({a[1]}, floor {a[0]}) -> {target} ({b[1]}, floor {b[0]}): upward")
            elif b[0] == a[0] and b[1] != a[1]:
                out.append(f"{module} ({a[1]}) -> {target} ({b[1]}): siblings on floor {a[0]} must not import each other")
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_every_module_belongs_to_a_declared_floor(graph: dict[str, set[str]]) -> None:
    unplaced = sorted(m for m in graph if _place(m) is None)
    assert not unplaced, f"modules outside every floor of docs/architecture.md: {unplaced}"


def test_imports_only_go_downward_and_never_between_siblings(graph: dict[str, set[str]]) -> None:
    violations = layering_violations(graph)
    assert not violations, "imports that break the floors:\n" + "\n".join(violations)


def test_every_floor_entry_holds_modules(graph: dict[str, set[str]]) -> None:
    placed = {_place(m)[1] for m in graph if _place(m) is not None}
    assert not [e for floor in FLOORS for e in floor if e not in placed]


def test_the_layering_check_finds_upward_and_sibling_imports() -> None:
    floors = (("p.low",), ("p.left", "p.right"), ("p.top",))
    graph = {"p.left.a": {"p.low.x", "p.left.b", "p.right.c"}, "p.low.x": {"p.top"}, "p.top": {"p.left.a", "p.right.c"}}
    assert layering_violations(graph, floors) == [
        "p.left.a (p.left) -> p.right.c (p.right): siblings on floor 1 must not import each other",
        "p.low.x (p.low, floor 0) -> p.top (p.top, floor 2): upward",
    ]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    cycles = _cycles(graph)
    assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_module_is_over_the_line_cap() -> None:
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by responsibility): {long}"


def test_the_cycle_detector_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# ------------------------------------------------------------------ plug-ins are asked, not named
#: Code that must ask a plug-in what it can do rather than compare its registered name: all of it,
#: the registries' own packages included (a plug-in's module names itself through ``name``, not
#: through a comparison).
NAME_BLIND = ("autoprune", "envs")


def registered_names() -> frozenset[str]:
    """Every name registered in the plug-in registries: backends, searchers, samplers, importance criteria."""
    from autoprune.graph.importance import IMPORTANCES
    from autoprune.measure.backends import BACKENDS
    from autoprune.search import SEARCHERS
    from autoprune.search.samplers import SAMPLERS

    return frozenset(n for registry in (BACKENDS, SEARCHERS, SAMPLERS, IMPORTANCES) for n in registry.names())


def _literals(node: ast.AST) -> list[str]:
    """The string literals ``node`` is, or holds as a tuple, list or set of literals."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def _pattern_literals(pattern: ast.pattern) -> list[str]:
    if isinstance(pattern, ast.MatchValue):
        return _literals(pattern.value)
    if isinstance(pattern, ast.MatchOr):
        return [lit for p in pattern.patterns for lit in _pattern_literals(p)]
    if isinstance(pattern, ast.MatchAs) and pattern.pattern is not None:
        return _pattern_literals(pattern.pattern)
    return []


def name_comparisons(source: str, names: frozenset[str]) -> list[tuple[int, str]]:
    """``(line, literal)`` of every comparison (``==``, ``!=``, ``in``, ``not in``, ``match`` case) with a registered name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
            found += [(node.lineno, lit) for side in (node.left, *node.comparators) for lit in _literals(side) if lit in names]
        elif isinstance(node, ast.match_case):
            found += [(node.pattern.lineno, lit) for lit in _pattern_literals(node.pattern) if lit in names]
    return sorted(found)


def test_no_module_compares_a_registered_name_to_a_literal() -> None:
    names = registered_names()
    found = [f"{path.relative_to(ROOT)}:{line}: {lit!r}"
             for package in NAME_BLIND for path in sorted((ROOT / package).rglob("*.py"))
             for line, lit in name_comparisons(path.read_text(), names)]
    assert not found, ("registered plug-in names compared to literals (ask the plug-in's class what it can do instead):\n"
                       + "\n".join(found))


def test_the_name_check_finds_comparisons_in_every_form() -> None:
    source = """
if backend == "torch" or "optuna" != s or s in ("ppo", "x") or s not in ["x"] or s in {"tpe"}:
    pass
if s == "something-else" or s.startswith("torch") or s < "ppo":
    pass
match s:
    case "l1" | "x":
        pass
    case "other":
        pass
"""
    names = frozenset({"torch", "optuna", "ppo", "tpe", "l1"})
    assert name_comparisons(source, names) == [(2, "optuna"), (2, "ppo"), (2, "torch"), (2, "tpe"), (7, "l1")]

