"""The package's shape: no import circle, pruned-model internals stay inside pruning.py, functions a reader can hold.

These read the source as text and syntax trees; each fails on a concrete regression (a module importing its
importer, a script reading a private attribute of a pruned model, a 150-line function).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tprune_core"
MAX_FUNCTION_LINES = 90
# Built from pieces so this file does not itself mention the names it looks for.
PRIVATE_PRUNING_NAMES = ("_t" + "prune", "_prune" + "_state", "tprune" + "_last")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules that ``name`` imports anywhere in its file (function-local imports included)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:      # `from .x import f` -> module x; `import a.b.c` -> deepest known
                t = t.rpartition(".")[0]
            if t and t != name and t != "tprune_core":
                found.add(t)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None


def test_the_package_has_no_import_circle():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    # sub-packages' __init__ may re-export their own modules; a package importing its children is no circle
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"


def test_no_file_outside_pruning_reads_pruned_model_internals():
    files = [p for d in ("tprune_core", "bench", "tests", "tools", "book") for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".md", ".sh") and p.name != "pruning.py"]
    files += [ROOT / "README.md", ROOT / "DESIGN.md"]
    offenders = [f"{p.relative_to(ROOT)}: {name}" for p in files for name in PRIVATE_PRUNING_NAMES
                 if name in p.read_text(errors="replace")]
    assert not offenders, "use tprune_core.pruning's public API instead:\n" + "\n".join(offenders)


def test_no_function_is_longer_than_a_reader_can_hold():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these:\n" + "\n".join(long)


# Layers, lowest first: a module may import from its own layer and the ones before it, never from a later one.
LAYER_ORDER = ["base", "data", "nn", "training", "analyses", "book", "cli"]
BASE_MODULES = {"tprune_core.errors", "tprune_core.rules", "tprune_core.fsio", "tprune_core.source", "tprune_core.paths"}


def _layer(module: str) -> str:
    if module in BASE_MODULES or module == "tprune_core":
        return "base"
    return module.split(".")[1]


def test_only_the_base_modules_sit_at_the_package_root():
    at_root = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert {f"tprune_core.{m}" for m in at_root} == BASE_MODULES
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages == set(LAYER_ORDER) - {"base"}


def test_layers_only_import_downward():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        here = LAYER_ORDER.index(_layer(name))
        for target in _imports(name, path, set(modules)):
            if LAYER_ORDER.index(_layer(target)) > here:
                upward.append(f"{name} -> {target}")
    assert not upward, "a lower layer imports a higher one:\n" + "\n".join(sorted(upward))


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The walker resolves relative imports across layers (else the test above could pass by not seeing them)."""
    path = tmp_path / "m.py"
    path.write_text("from ..training.zoo import zoo_plan\nfrom . import cache\n")
    found = _imports("tprune_core.data.m", path, {"tprune_core.training.zoo", "tprune_core.data.cache"})
    assert found == {"tprune_core.training.zoo", "tprune_core.data.cache"}


def test_old_flat_module_names_still_import_as_the_same_modules():
    import importlib
    import tprune_core
    from tprune_core import macs, models, pruning   # the README's Python API
    assert (models, pruning, macs) == tuple(importlib.import_module(f"tprune_core.nn.{m}")
                                            for m in ("models", "pruning", "macs"))
    for old, new in tprune_core.MOVED.items():
        assert importlib.import_module(f"tprune_core.{old}") is importlib.import_module(new)
    from tprune_core.analysis import PAPER_INPUTS   # a chapter's import
    assert PAPER_INPUTS


def test_only_paths_reads_where_data_caches_and_the_release_live():
    readers = sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                     for var in ("TPRUNE_DATA", "TPRUNE_CACHE", "TPRUNE_RELEASE")
                     if f'environ.get("{var}"' in p.read_text() or f'environ["{var}"]' in p.read_text())
    assert set(readers) == {"tprune_core/paths.py"}, readers


def test_the_zoo_spec_does_not_import_its_builder():
    """zoo (spec, plan, entries) stays readable without the training machinery that builds it (training.build)."""
    modules = _modules()
    assert "tprune_core.training.build" not in _imports("tprune_core.training.zoo",
                                                        modules["tprune_core.training.zoo"], set(modules))
