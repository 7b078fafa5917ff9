"""The shape rules of the code base, checked on the source (docs/architecture.md).

- no function over 120 lines and no module over 600 lines in ``planner/``;
- imports inside function bodies only for optional heavy dependencies (torch, matplotlib, ray,
  triton and the torch kernels), so that the layering `lint-imports` checks is the real one;
- no reference to a document or data file outside the repository.

Import cycles and upward imports are checked by import-linter (``lint-imports`` in CI, contracts
in pyproject.toml).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLANNER = ROOT / "planner"
MAX_FUNCTION_LINES = 120
MAX_MODULE_LINES = 600
#: top-level packages a function body may import lazily: optional or slow to import
LAZY_OK = {"torch", "matplotlib", "ray", "triton", "planner_kernels", "transformers"}


def _modules() -> list[Path]:
    return sorted(PLANNER.rglob("*.py"))


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_over_the_limit() -> None:
    long = []
    for path in _modules():
        for fn in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            n = fn.end_lineno - fn.lineno + 1
            if n > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({n} lines)")
    assert not long, "functions over 120 lines: " + "; ".join(long)


def test_no_module_over_the_limit() -> None:
    big = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    assert not big, "modules over 600 lines: " + "; ".join(big)


def _lazy_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for fn in _functions(tree):
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                found += [(node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((node.lineno, node.module))
    return found


def test_function_level_imports_only_for_optional_dependencies() -> None:
    bad = []
    for path in _modules():
        for line, module in _lazy_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if module.split(".")[0] not in LAZY_OK:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "imports inside functions: " + "; ".join(bad)


def test_lazy_import_check_catches_one() -> None:
    src = "def f():\n    import numpy\n    from planner.api import plan\n    import torch\n"
    assert [m for _, m in _lazy_imports(ast.parse(src))] == ["numpy", "planner.api", "torch"]


OUTSIDE = re.compile(r"FACTS\.md|DESIGN\.md|STYLE\.md|\.\./shared|shared/data/|shared/docs/")
SHIPPED = ("planner", "kernels", "hwprofiles", "docs", "examples", "tools")


@pytest.mark.parametrize("folder", SHIPPED)
def test_no_reference_outside_the_repository(folder: str) -> None:
    hits = []
    for path in sorted((ROOT / folder).rglob("*")):
        if path.suffix not in {".py", ".md", ".json", ".yaml", ".yml", ".sh"} or not path.is_file():
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}")
    assert not hits, "references to files outside the repository: " + "; ".join(hits[:20])


def test_docs_cited_by_the_code_exist() -> None:
    cited = set()
    for path in _modules():
        cited |= set(re.findall(r"docs/[a-z0-9_-]+\.md", path.read_text(encoding="utf-8")))
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert cited and not missing, f"docs cited but missing: {missing}"
