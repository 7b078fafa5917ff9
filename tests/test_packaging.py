"""What the wheel installs: every subpackage of planner/ listed in pyproject.toml (hwprofiles/ is
mapped into planner.hwprofiles, kernels/ into planner_kernels), and no script among the
installed modules: one-off measurement and data-seeding scripts live in tools/, which is not
installed.

The one entry point is ``planner/__main__.py`` (``python -m planner``, the same CLI as the
``moe-planner`` console script); it is the only installed module allowed to run on import.
"""

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Installed source folders (pyproject.toml's package-dir) and the entry points allowed in them.
INSTALLED = ("planner", "kernels", "hwprofiles")
ENTRY_POINTS = {"planner/__main__.py"}


def test_every_subpackage_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(cfg["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "planner").rglob("__init__.py")
    }
    assert found - listed == set(), f"add to pyproject.toml packages: {sorted(found - listed)}"
    assert "planner.hwprofiles" in listed


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either operand order)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    parts = [node.test.left, *node.test.comparators]
    names = {p.id for p in parts if isinstance(p, ast.Name)}
    consts = {p.value for p in parts if isinstance(p, ast.Constant)}
    return "__name__" in names and "__main__" in consts


def test_no_installed_module_is_a_script():
    scripts = []
    for folder in INSTALLED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ENTRY_POINTS:
                continue
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text, filename=rel)
            if path.name == "__main__.py" or text.startswith("#!") or any(_is_main_guard(n) for n in tree.body):
                scripts.append(rel)
    assert scripts == [], f"scripts inside installed packages (move them to tools/): {scripts}"


def test_tools_are_not_installed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    st = cfg["tool"]["setuptools"]
    assert not any(p == "tools" or p.startswith("tools.") for p in st["packages"])
    assert "tools" not in st.get("package-dir", {}).values()


@pytest.mark.slow
def test_built_wheel_holds_no_script(tmp_path):
    """Build the wheel from a copy of the tree and read what it really installs."""
    src = tmp_path / "src"
    for name in ("planner", "kernels", "hwprofiles"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1:]}")
    (wheel,) = out.glob("*.whl")
    allowed = ENTRY_POINTS
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        scripts = [
            n for n in names
            if n.endswith(".py") and n not in allowed
            and any(_is_main_guard(s) for s in ast.parse(z.read(n).decode("utf-8")).body)
        ]
    assert scripts == []
    assert not [n for n in names if n.startswith("tools/") or "make_default" in n or "seed_" in n]
    assert "planner/data/traces/qwen3-30b-a3b.npz" in names and "planner/hwprofiles/h100-sxm.json" in names
    assert "planner_kernels/profiler.py" in names
