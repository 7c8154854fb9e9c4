"""Imports go one way: api -> graph -> runtime; api and graph start no threads, load no Ray."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "sage"


def module_level_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions or TYPE_CHECKING blocks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.ClassDef) else []:
            if isinstance(sub, ast.Import):
                found.update(alias.name for alias in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.module:
                found.add(sub.module)
    return found


def offenders(package: str, forbidden: tuple[str, ...]) -> dict[str, set[str]]:
    bad = {}
    for path in (SRC / package).rglob("*.py"):
        hits = {m for m in module_level_imports(path) if m.startswith(forbidden)}
        if hits:
            bad[str(path.relative_to(SRC))] = hits
    return bad


def test_graph_is_plain_data() -> None:
    assert (
        offenders("kernel/graph", ("threading", "ray", "sage.kernel.runtime", "sage.kernel.api"))
        == {}
    )


def test_api_imports_no_threads_no_ray_and_no_runtime_at_import_time() -> None:
    assert offenders("kernel/api", ("threading", "ray", "sage.kernel.runtime")) == {}


def test_runtime_does_not_reach_back_into_the_api() -> None:
    assert offenders("kernel/runtime", ("sage.kernel.api",)) == {}


def test_function_base_classes_do_not_depend_on_the_kernel() -> None:
    assert offenders("common", ("sage.kernel",)) == {}


def test_the_kernel_does_not_depend_on_middleware() -> None:
    assert offenders("kernel", ("sage.middleware",)) == {}
    assert offenders("common", ("sage.middleware",)) == {}
