"""The package's shape: imports run one way (lazy ones inside functions included), no cycles, and
modules and functions small enough to read in one sitting. Parsed from the source, nothing imported."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mixerlab"

# Layers, lowest first. A module may import from its own layer and the ones below it, never above.
# A new module must be placed here: the test fails for a module it does not know.
LAYERS = [
    ("base", ["mixerlab.errors", "mixerlab.io_utils", "mixerlab.validation"]),
    ("layers", ["mixerlab.models.layers"]),
    ("models", ["mixerlab.models"]),
    ("weights, data, runtime", ["mixerlab.weights", "mixerlab.data", "mixerlab.perf.runtime",
                                "mixerlab.perf.allocator", "mixerlab.perf.timing", "mixerlab.perf.gemm",
                                "mixerlab.perf.threads"]),
    # perf.inference may try an exported model among its candidates, so it sits beside export
    ("tasks", ["mixerlab.training", "mixerlab.evaluate", "mixerlab.predict", "mixerlab.report", "mixerlab.perf.bench",
               "mixerlab.perf.inference",
               "mixerlab.perf", "mixerlab.export", "mixerlab.serve", "mixerlab.viz", "mixerlab.features"]),
    ("cli", ["mixerlab.cli", "mixerlab.__main__"]),
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = ("mixerlab",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def layer_of(module: str) -> int:
    """The layer of the longest matching prefix in LAYERS."""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if rank is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return rank


def imports_of(module: str) -> set[str]:
    """Every mixerlab module `module` imports, at module level or inside functions. Importing a
    module also runs the __init__ of each package above it, except the packages `module` lives in."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "mixerlab"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "mixerlab":
                target = node.module
            else:
                continue
            for alias in node.names:  # `from pkg import module` names a module, not a name in pkg
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    result = set()
    for target in found:
        parts = target.split(".")
        for i in range(2, len(parts) + 1):
            parent = ".".join(parts[:i])
            if parent in MODULES and not module.startswith(parent + ".") and parent != module \
                    and (parent == target or not _imports_nothing(parent)):
                result.add(parent)
    return result


def _imports_nothing(module: str) -> bool:
    """A package __init__ with no import in it: passing through it on the way to a submodule (perf's,
    to reach perf.allocator) runs nothing of its layer."""
    tree = ast.parse(MODULES[module].read_text())
    return not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree))


GRAPH = {m: imports_of(m) for m in MODULES if m != "mixerlab"}


def test_nothing_imports_the_public_facade():
    # mixerlab/__init__.py gathers the public API from every layer; importing it from inside would
    # tie every module to every other one.
    offenders = [m for m, deps in GRAPH.items() if "mixerlab" in deps]
    assert not offenders, f"these modules import the package root (import the module itself): {offenders}"


def test_imports_run_one_way():
    wrong = [f"{m} (layer '{LAYERS[layer_of(m)][0]}') imports {d} (layer '{LAYERS[layer_of(d)][0]}')"
             for m, deps in GRAPH.items() for d in deps if d != "mixerlab" and layer_of(d) > layer_of(m)]
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_model_modules_import_nothing_above_them():
    above = ("mixerlab.weights", "mixerlab.data", "mixerlab.training", "mixerlab.perf", "mixerlab.evaluate",
             "mixerlab.predict", "mixerlab.cli", "mixerlab.export", "mixerlab.serve", "mixerlab.viz")
    wrong = [(m, d) for m, deps in GRAPH.items() if m.startswith("mixerlab.models")
             for d in deps if d.startswith(above)]
    assert not wrong, wrong


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph; any component of two or more
    modules (or a module importing itself) is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in GRAPH[v]:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    # The rules above are only as good as the parser: check it on the forms the package uses.
    deps = GRAPH["mixerlab.cli.train"]
    assert "mixerlab.training.loop" in deps  # imported inside a function, relatively
    assert "mixerlab.weights" in GRAPH["mixerlab.cli.models"]  # the package __init__ runs for weights.load
    assert "mixerlab.models.serialization" in GRAPH["mixerlab.models.base"]  # `from . import serialization`
    assert "mixerlab.models" not in GRAPH["mixerlab.models.base"]  # its own package is not a dependency


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_are_readable_in_one_sitting(module):
    text = MODULES[module].read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{module} has {len(text.splitlines())} lines"
    functions = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in functions
            if n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{module}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_python_in_the_shell_scripts_imports_names_that_exist():
    """make demo runs Python from a heredoc in scripts/demo.sh: a moved function must not break it
    after the training it follows."""
    import importlib
    import re

    scripts = sorted((SRC.parents[1] / "scripts").glob("*.sh"))
    found = 0
    for script in scripts:
        for body in re.findall(r"<<'PY'\n(.*?)\nPY\n", script.read_text(), flags=re.S):
            for node in ast.walk(ast.parse(body)):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mixerlab"):
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        assert hasattr(module, alias.name), f"{script.name}: {node.module} has no {alias.name}"
                        found += 1
    assert found >= 1
