"""The package's structure: layers along the data path, imports only downward, no cycles.

Every import is parsed, including those inside functions and under ``TYPE_CHECKING``: a
function-level import that dodges a cycle is still a cycle. The layers, bottom to top, are
documented in ``docs/architecture.md``; a module may import its own layer or any layer below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top. A module belongs to the first entry that is a prefix of its dotted name.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("autoprune", "autoprune.errors", "autoprune.paths", "autoprune.registry"),
    ("autoprune.zoo",),
    ("autoprune.graph",),
    ("autoprune.formats",),
    ("autoprune.measure",),
    ("autoprune.objective",),
    ("autoprune.training",),
    ("autoprune.search",),
    ("autoprune.transfer",),
    ("autoprune.config",),
    ("autoprune.tracking",),
    ("autoprune.app",),
    ("envs",),
    ("autoprune.cli", "autoprune.__main__"),
)


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


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return None if best is None else best[0]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_every_module_belongs_to_a_declared_layer(graph: dict[str, set[str]]) -> None:
    unplaced = sorted(m for m in graph if _layer(m) is None)
    assert not unplaced, f"modules outside every layer of docs/architecture.md: {unplaced}"


def test_imports_only_go_downward(graph: dict[str, set[str]]) -> None:
    upward = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = _layer(module), _layer(target)
            # The package root only re-exports errors; it may be imported from anywhere.
            if a is not None and b is not None and b > a:
                upward.append(f"{module} (layer {LAYERS[a][0]}) -> {target} (layer {LAYERS[b][0]})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


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


def test_no_module_is_over_600_lines() -> None:
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 600}
    assert not long, f"modules over 600 lines (split them by responsibility): {long}"


def test_the_cycle_detector_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# ------------------------------------------------------------------ plug-ins are asked, not named
#: Packages that must ask a plug-in what it can do rather than compare its registered name.
NAME_BLIND = ("autoprune/app", "autoprune/objective")


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


def test_app_and_objective_never_compare_a_registered_name_to_a_literal() -> None:
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

