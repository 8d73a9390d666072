"""The import rules of the layout (README, "Where things live") that import-linter does not check.

``lint-imports`` (``make lint``) checks the layers; these tests read every module of ``cxrdist`` as text (AST) and
check the rest: imports sit at module top, except optional heavy dependencies (DALI, DeepSpeed, W&B), each with a
one-line reason on its line; no ``TYPE_CHECKING`` block hides an import; ``eval/`` never imports
``torch.distributed``; and no two modules import each other, directly or through others (no circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cxrdist"
# Optional heavy dependencies that may be imported inside a function (with a reason on the line).
OPTIONAL = ("nvidia.dali", "deepspeed", "wandb", "cxrdist.data.loaders.dali")
# Lazy public attributes: (module, import) pairs allowed inside a function, each with its reason.
LAZY = {("cxrdist", "cxrdist.deploy.load")}  # cxrdist.load_model: torch + every method; the CLIs stay cheap


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The absolute module names an import statement names (``from a import b``: ``a.b`` when that is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative: resolve against this module's package
        pkg = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join([*pkg, base] if base else pkg)
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _function_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            found += [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
    return list({id(n): n for n in found}.values())


def test_the_module_list_is_read():
    assert {"cxrdist.run.session", "cxrdist.engine.pipeline", "cxrdist.data.loaders.factory"} <= set(MODULES)


def _misplaced_imports(module: str) -> list[str]:
    path = MODULES[module]
    text = path.read_text()
    lines = text.splitlines()
    bad = []
    for node in _function_imports(ast.parse(text)):
        names = _imported(node, module, path.name == "__init__.py")
        cxrdist_or_optional = [n for n in names if n.startswith("cxrdist") or n.startswith(OPTIONAL)]
        if not cxrdist_or_optional:
            continue  # a third-party import inside a function (e.g. hydra, tqdm) is not a layering question
        optional = all(n.startswith(OPTIONAL) or (module, n) in LAZY for n in cxrdist_or_optional)
        reason = "#" in lines[node.lineno - 1] or "#" in lines[node.lineno - 2]
        if not (optional and reason):
            bad.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return bad


def test_imports_sit_at_module_top_except_optional_heavy_dependencies():
    bad = [line for module in MODULES for line in _misplaced_imports(module)]
    assert not bad, "imports inside functions (move them to the top, or give an optional dependency a reason):\n" + (
        "\n".join(bad)
    )


def test_no_type_checking_block_hides_an_import():
    hidden = []
    for path in MODULES.values():
        tree = ast.parse(path.read_text())
        hidden += [
            f"{path}:{n.lineno}"
            for n in ast.walk(tree)
            if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
        ]
    assert not hidden, f"TYPE_CHECKING block(s) at {hidden}: import at the top instead"


def test_eval_never_imports_torch_distributed():
    bad = []
    for module, path in MODULES.items():
        if not module.startswith("cxrdist.eval"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = _imported(node, module, path.name == "__init__.py")
                bad += [f"{path}:{node.lineno}" for n in names if n.startswith("torch.distributed")]
    assert not bad, f"eval/ is pure functions over arrays; torch.distributed imported at {bad}"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for name in _imported(node, module, path.name == "__init__.py"):
                    if name in MODULES and name != module and not module.startswith(name + "."):
                        graph[module].add(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_the_circle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
