"""The package's imports flow one way: a module imports its own wing or a wing below it, never
one above, and no chain of imports (lazy ones inside functions included) comes back to where it
started. Read from the source with ``ast``, so nothing is imported.

The wings, top to bottom (a folder per stage; the ground floor is the top-level modules):

    commands (+ cli)  ->  analysis  ->  runs  ->  collection  ->  models, questions  ->  ground floor

e.g. ``analysis`` may use ``collection.forward`` / ``readout`` and ``models`` (the causal
experiments), ``runs`` may use ``collection.storage``, but ``collection`` never imports ``runs``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "hf_introspect"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# wing -> rank; a module may import wings of its own rank only when it is the same wing.
RANK = {
    "commands": 5,
    "analysis": 4,
    "runs": 3,
    "collection": 2,
    "models": 1,
    "questions": 1,
    "ground": 0,
}
# Top-level modules: which wing each belongs to (a new one must be placed here).
TOP_LEVEL = {
    "cli": "commands",
    "schema": "ground",
    "config": "ground",
    "errors": "ground",
    "passes": "ground",
    "testing": "ground",
}
# Names the package root re-exports lazily (hf_introspect/__init__.py), and where they live: an
# import of one counts as an import of that module. The root's own imports are not walked (it is
# the public facade over every wing).
FACADE = {
    "__version__": None,  # defined in the root itself: ground floor
    "UserError": "errors",
    "CollectConfig": "config",
    "collect": "collection.run",
    "load_run": "runs.read",
    "layer_matrix": "runs.read",
}

# Edges that break the rules today, each to be fixed by its owner: the checks skip them, and an
# entry that no longer exists fails test_known_violations_still_exist (remove it then).
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def wing(module: str) -> str:
    """The wing of ``hf_introspect.x.y``: its first folder, or the top-level module's table entry."""
    first = module.split(".")[1]
    if (ROOT / first).is_dir():
        return first
    assert first in TOP_LEVEL, f"{module}: a new top-level module; put it in a wing or in TOP_LEVEL"
    return TOP_LEVEL[first]


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``module`` imports anywhere in its source (lazy ones included)."""
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != PACKAGE:
            continue
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if sub in known:  # `from . import metrics`: the submodule itself
                found.add(sub)
            elif target == PACKAGE:  # a name the root re-exports
                assert alias.name in FACADE, f"{module} imports {alias.name!r} from the package root"
                found.add(f"{PACKAGE}.{FACADE[alias.name]}" if FACADE[alias.name] else PACKAGE)
            else:
                found.add(target)
    return found


def raw_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports(m, p, known) - {m} for m, p in mods.items() if m != PACKAGE}


def graph() -> dict[str, set[str]]:
    return {m: {d for d in deps if (m, d) not in KNOWN_VIOLATIONS} for m, deps in raw_graph().items()}


def test_known_violations_still_exist():
    g = raw_graph()
    stale = [edge for edge in KNOWN_VIOLATIONS if edge[1] not in g.get(edge[0], set())]
    assert not stale, f"fixed, remove from KNOWN_VIOLATIONS: {stale}"


def test_layer_table_covers_the_package():
    for m in graph():
        assert wing(m) in RANK, f"{m}: wing {wing(m)!r} has no rank in the table"


def test_no_upward_import():
    bad = []
    for m, deps in graph().items():
        for d in deps:
            if d == PACKAGE:  # only __version__, by the facade check above
                continue
            a, b = wing(m), wing(d)
            if a != b and RANK[b] >= RANK[a]:
                bad.append(f"{m} ({a}) imports {d} ({b})")
    assert not bad, "imports must go down the wings:\n" + "\n".join(sorted(bad))


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (iterative DFS, colours)."""
    state = {}  # 1: on the current path, 2: done
    for start in sorted(g):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(g[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state and nxt in g:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(g[nxt])))
    return None


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_a_cycle_and_an_upward_import():
    # The checker itself on a planted graph: a cycle is found, a clean graph passes.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert wing(f"{PACKAGE}.collection.run") == "collection" and wing(f"{PACKAGE}.cli") == "commands"
    assert RANK[wing(f"{PACKAGE}.runs.read")] > RANK[wing(f"{PACKAGE}.collection.storage")]
