"""The package dependency graph: every lmopt import, at module top or inside a function, read with ast.

(a) Packages are layered: a module of package P imports only P, earlier packages of `ORDER`, and the
    base modules (`lmopt/*.py`); base modules import only base modules; the top (the `cli` package,
    `cli_*.py`, `demo.py`, `report.py`, `__main__.py`) may import anything. So no cycle can form
    between packages.
(b) A function-level import of an lmopt module states why it is not at the top: a `# lazy: <reason>`
    comment on its line or the line above (an import right below an explained one, in the same block,
    shares its reason).
(c) No cycle among the module-level imports of lmopt modules (within a package too).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ORDER = ["native", "models", "data", "train", "compress", "evaluate", "serve", "monitor", "pipeline", "tune", "export",
         "select"]
TOP_FILES = {"cli", "demo", "report", "__main__"}

# Files not yet converted to module-top imports (their function-level lmopt imports carry no
# `# lazy:` reason). Remove an entry once its file is converted; empty this list at the end.
NOT_YET_CONVERTED: list[str] = [
    "src/lmopt/data/clean.py",
    "src/lmopt/monitor/registry.py",
]
# Files allowed to break the layering of (a) for now; each entry a file path. Empty at the end.
NOT_YET_LAYERED: list[str] = []


@dataclass(frozen=True)
class Import:
    file: str
    """Path of the importing file, relative to the repository root."""
    module: str
    """The importing module (`lmopt.train.loop`)."""
    target: str
    """The imported lmopt module, or the module a name is imported from."""
    name: str
    """The name imported by `from target import name` (a submodule, or not); "" for `import target`."""
    line: int
    in_function: bool
    explained: bool
    """A `# lazy:` comment on the line, the line above, or above the import block it belongs to."""


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str, src: Path = SRC) -> str:
    """`models` ... `select` for package modules, `base` for lmopt/*.py, `top` for the CLI and reports."""
    parts = module.split(".")
    if len(parts) == 1:
        return "base"
    if (src / "lmopt" / parts[1]).is_dir():
        return "top" if parts[1] == "cli" else parts[1]
    return "top" if parts[1] in TOP_FILES or parts[1].startswith("cli_") else "base"


def _target(node: ast.Import | ast.ImportFrom, alias: ast.alias, module: str, is_package: bool) -> str:
    if isinstance(node, ast.Import):
        return alias.name
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _explained(lines: list[str], node: ast.stmt, siblings: list[ast.stmt]) -> bool:
    def commented(stmt: ast.stmt) -> bool:
        i = stmt.lineno - 1
        return "# lazy:" in lines[i] or (i > 0 and "# lazy:" in lines[i - 1])

    if commented(node):
        return True
    block = siblings[: siblings.index(node) + 1]
    for stmt in reversed(block[:-1]):  # walk up the run of import statements this one ends
        if not isinstance(stmt, ast.Import | ast.ImportFrom):
            return False
        if commented(stmt):
            return True
    return False


def lmopt_imports(path: Path, src: Path = SRC) -> list[Import]:
    text = path.read_text(encoding="utf-8")
    lines, module = text.splitlines(), module_name(path, src)
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            for child in block:
                if isinstance(child, ast.Import | ast.ImportFrom):
                    for alias in child.names:
                        target = _target(child, alias, module, path.name == "__init__.py")
                        if target.split(".")[0] == "lmopt":
                            name = alias.name if isinstance(child, ast.ImportFrom) else ""
                            found.append(Import(str(path.relative_to(src.parent)), module, target, name,
                                                child.lineno, in_function,
                                                in_function and _explained(lines, child, block)))
                inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                visit(child, inner)

    visit(ast.parse(text), False)
    return found


@lru_cache(maxsize=1)
def all_imports() -> tuple[Import, ...]:
    return tuple(imp for path in sorted((SRC / "lmopt").rglob("*.py")) for imp in lmopt_imports(path))


def layering_violation(imp: Import, src: Path = SRC) -> str | None:
    origin, dest = layer_of(imp.module, src), layer_of(imp.target, src)
    if origin == "top" or dest in (origin, "base"):
        return None
    if origin == "base" or dest == "top" or ORDER.index(dest) > ORDER.index(origin):
        return f"{imp.file}:{imp.line}: {origin} imports {dest} ({imp.target})"
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each cycle a depth-first search meets, as "a -> b -> a"."""
    cycles, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:  # on the path: a cycle back to it
                path = [*stack, node]
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif state[nxt] == 0:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            visit(node, [])
    return cycles


def test_every_package_is_known_to_the_layering():
    packages = {p.name for p in (SRC / "lmopt").iterdir() if (p / "__init__.py").exists()}
    assert packages - {"cli"} <= set(ORDER), f"add {sorted(packages - {'cli'} - set(ORDER))} to ORDER"


def test_packages_import_only_earlier_packages_and_base():
    violations = [v for imp in all_imports() if imp.file not in NOT_YET_LAYERED
                  if (v := layering_violation(imp))]
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_function_level_lmopt_imports_state_a_reason():
    unexplained = [f"{imp.file}:{imp.line}: {imp.target}" for imp in all_imports()
                   if imp.in_function and not imp.explained and imp.file not in NOT_YET_CONVERTED]
    assert not unexplained, ("function-level imports of lmopt modules without a `# lazy: <reason>` "
                             "comment (move them to the module top, or say why not):\n" + "\n".join(unexplained))


def _resolve(imp: Import, modules: set[str]) -> str | None:
    """The module an import runs: `lmopt.a.b`; for `from lmopt.a import b`, `lmopt.a.b` when it is one."""
    target = f"{imp.target}.{imp.name}" if f"{imp.target}.{imp.name}" in modules else imp.target
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def test_module_level_imports_form_no_cycle():
    imports = [imp for imp in all_imports() if not imp.in_function]
    modules = {module_name(p) for p in (SRC / "lmopt").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        target = _resolve(imp, modules)
        # A package's own __init__ importing its submodules is not a cycle Python trips on.
        if target and target != imp.module and not imp.module.startswith(target + "."):
            graph[imp.module].add(target)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_allow_lists_name_only_files_that_still_need_them():
    unexplained = {imp.file for imp in all_imports() if imp.in_function and not imp.explained}
    against_layers = {imp.file for imp in all_imports() if layering_violation(imp)}
    stale = sorted(set(NOT_YET_CONVERTED) - unexplained) + sorted(set(NOT_YET_LAYERED) - against_layers)
    assert not stale, f"converted now, remove from the allow-lists at the top of this file: {stale}"


def test_the_checks_see_faults(tmp_path):
    # The checks themselves on a hand-written module: a lazy import without a reason is caught, one with
    # a reason (or in the block right below one) is not; data importing evaluate breaks the layering.
    pkg = tmp_path / "src" / "lmopt" / "data"
    pkg.mkdir(parents=True)
    (tmp_path / "src" / "lmopt" / "evaluate").mkdir()
    (pkg / "x.py").write_text(
        "import lmopt.errors\n\n\ndef f():\n    from lmopt.evaluate import mc\n\n\n"
        "def g():\n    # lazy: start-up cost\n    from lmopt.io import write_json\n    from lmopt.hardware import x\n"
    )
    found = lmopt_imports(pkg / "x.py", tmp_path / "src")
    lazy = {(imp.target, imp.explained) for imp in found if imp.in_function}
    assert lazy == {("lmopt.evaluate", False), ("lmopt.io", True), ("lmopt.hardware", True)}
    by_target = {imp.target: imp for imp in found}
    assert layering_violation(by_target["lmopt.evaluate"], tmp_path / "src") == (
        "src/lmopt/data/x.py:5: data imports evaluate (lmopt.evaluate)")
    assert layering_violation(by_target["lmopt.errors"], tmp_path / "src") is None
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
