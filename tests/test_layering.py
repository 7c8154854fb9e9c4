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


# -- the inference stack ------------------------------------------------------------------------

_ABOVE_INFERENCE = (
    "sage.kernel",
    "sage.middleware",
    "sage.cli",
    "sage.benchmark",
    "sage.dashboard",
    "sage.demos",
    "sage.core",
)


def test_the_kernel_imports_no_inference_code() -> None:
    assert offenders("kernel", ("sage.inference", "sage.common.components")) == {}


def test_inference_builds_on_sage_common_only() -> None:
    assert offenders("inference", _ABOVE_INFERENCE) == {}


def test_the_control_plane_knows_no_gateway_engine_or_client() -> None:
    forbidden = (
        "sage.inference.gateway",
        "sage.inference.engines",
        "sage.inference.client",
        "sage.inference.deploy",
    )
    assert offenders("inference/control_plane", forbidden) == {}


def test_engines_know_no_gateway_control_plane_or_client() -> None:
    forbidden = (
        "sage.inference.gateway",
        "sage.inference.control_plane",
        "sage.inference.client",
        "sage.inference.deploy",
    )
    assert offenders("inference/engines", forbidden) == {}


def test_sage_common_holds_no_inference_code_only_the_seed_paths() -> None:
    bad = offenders("common", ("sage.inference",))
    assert {path for path in bad if not path.startswith("common/components/")} == set()
    components = SRC / "common" / "components"
    assert sorted(p.name for p in components.rglob("*.py")) == ["__init__.py"] * 3


def test_no_module_of_the_inference_package_holds_more_than_one_concepts_worth() -> None:
    """About 500 lines at most: a longer module has grown a second concept to split off."""
    long = {
        str(path.relative_to(SRC)): n
        for path in (SRC / "inference").rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 520
    }
    assert long == {}
