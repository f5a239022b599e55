"""Package layering: arrows point one way, launch -> data_engine -> planning ->
perception -> sim, and `import sim` stays light (no torch)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sim", "perception", "planning", "data_engine", "launch")
FORBIDDEN: dict[str, set[str]] = {
    "sim": {"perception", "planning", "data_engine", "launch"},
    "perception": {"planning", "data_engine", "launch"},
    "planning": {"data_engine", "launch"},
    "data_engine": {"launch"},
    "launch": set(),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_top_levels(path: Path, module: str | None = None) -> set[str]:
    """Top-level package names imported anywhere in a file (function bodies included),
    with relative imports resolved against the file's own package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                found.add(base[0] if base else "")
            elif node.module:
                found.add(node.module.split(".")[0])
    return found


def _py_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_parser_sees_imports(tmp_path: Path) -> None:
    """The checker itself finds plain, from, relative and function-local imports."""
    pkg = ROOT / "sim" / "render"
    assert "sim" in imported_top_levels(pkg / "labels.py")
    assert "numba" in imported_top_levels(pkg / "kernels.py")
    src = (
        "import os.path\nfrom launch.cli import app\nfrom . import raster\n"
        "def f():\n    import torch\n"
    )
    probe = tmp_path / "probe.py"
    probe.write_text(src)
    assert imported_top_levels(probe, "sim.render.probe") == {"os", "launch", "sim", "torch"}


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_point_one_way(package: str) -> None:
    files = _py_files(package)
    if package == "sim":
        assert len(files) >= 15, "the sim package should be found"
    bad = {
        str(f.relative_to(ROOT)): sorted(imported_top_levels(f) & FORBIDDEN[package])
        for f in files
    }
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}: {bad}"


def test_nothing_outside_launch_imports_launch() -> None:
    offenders = [
        str(f.relative_to(ROOT))
        for package in PACKAGES if package != "launch"
        for f in _py_files(package)
        if "launch" in imported_top_levels(f)
    ]
    assert not offenders


def test_import_sim_does_not_import_torch() -> None:
    code = (
        "import sys, importlib, pkgutil, sim\n"
        "assert 'torch' not in sys.modules, 'import sim pulled in torch'\n"
        "for m in pkgutil.walk_packages(sim.__path__, 'sim.'):\n"
        "    importlib.import_module(m.name)\n"
        "heavy = sorted({'torch', 'ultralytics'} & set(sys.modules))\n"
        "assert not heavy, f'sim submodules import {heavy}'\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
