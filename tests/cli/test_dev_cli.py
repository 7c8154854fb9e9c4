"""``sage-dev quality``: the commands it builds, and real runs on a tiny throwaway project."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sage.cli import dev
from sage.cli.dev import Step, quality_steps

SAGE_DEV = [sys.executable, "-m", "sage.cli.dev"]
PY = "/env/bin/python"

needs_tools = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("ruff", "mypy")),
    reason="ruff or mypy is not installed: make quality installs them",
)

PYPROJECT = """\
[project]
name = "sage-flow"
version = "0"

[tool.ruff]
line-length = 100

[tool.ruff.lint]
select = ["E", "F", "I"]

[tool.mypy]
files = ["src/pkg"]
strict = true
"""


def test_check_only_changes_nothing() -> None:
    assert quality_steps(["src", "tests"], fix=False, python=PY) == [
        Step("ruff check", "ruff", (PY, "-m", "ruff", "check", "src", "tests")),
        Step(
            "ruff format --check", "ruff", (PY, "-m", "ruff", "format", "--check", "src", "tests")
        ),
        Step("mypy", "mypy", (PY, "-m", "mypy")),
    ]


def test_fix_mode_fixes_then_formats_then_type_checks() -> None:
    assert [s.argv[2:] for s in quality_steps(["src"], fix=True, python=PY)] == [
        ("ruff", "check", "--fix", "src"),
        ("ruff", "format", "src"),
        ("mypy",),
    ]


def test_custom_paths_go_to_ruff_and_mypy_keeps_its_configured_files() -> None:
    steps = quality_steps(["src/sage/cli/dev.py"], fix=False)
    assert [s.argv[-1] for s in steps[:2]] == ["src/sage/cli/dev.py"] * 2
    assert steps[2].argv == (sys.executable, "-m", "mypy")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A one-package project that passes every check (its mypy cache is its own)."""
    root = tmp_path / "proj"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    (root / "src" / "pkg" / "__init__.py").write_text('"""A package."""\n', encoding="utf-8")
    return root


def _sage_dev(
    project: Path, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"}  # plain text to parse
    env |= {"MYPY_CACHE_DIR": str(project.parent / "mypy-cache"), "NO_COLOR": "1"}
    return subprocess.run(
        [*SAGE_DEV, "quality", *args],
        cwd=cwd or project.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _result(output: str, step: str) -> str:
    """The result cell of ``step``'s row in the summary table."""
    rows = [line.split("│") for line in output.splitlines() if line.count("│") == 4]
    cells = {row[1].strip(): row[2].strip() for row in rows}
    return cells[step]


@needs_tools
def test_a_clean_project_passes(project: Path) -> None:
    run = _sage_dev(project, "--check-only", "--root", str(project))
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    for step in ("ruff check", "ruff format --check", "mypy"):
        assert _result(out, step) == "passed", out
    assert "all checks passed" in out


@needs_tools
def test_lint_and_type_errors_fail_every_step_runs_and_no_file_changes(project: Path) -> None:
    bad = project / "src" / "pkg" / "mod.py"
    source = 'import os\n\n\ndef f() -> int:\n    return "x"\n'
    bad.write_text(source, encoding="utf-8")
    run = _sage_dev(project, "--check-only", "--root", str(project))
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert _result(out, "ruff check") == "failed", out
    assert _result(out, "ruff format --check") == "passed", out
    assert _result(out, "mypy") == "failed", out
    assert "F401" in out and "return-value" in out  # the tools' own output is shown
    assert bad.read_text(encoding="utf-8") == source


@needs_tools
def test_without_check_only_the_file_is_fixed_and_formatted(project: Path) -> None:
    bad = project / "src" / "pkg" / "mod.py"
    bad.write_text("import os\ndef f( x:int )->int:\n    return x*2\n", encoding="utf-8")
    run = _sage_dev(project, cwd=project / "src")  # the root is found from below it
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert _result(out, "ruff check --fix") == "passed", out
    assert _result(out, "ruff format") == "passed", out
    assert bad.read_text(encoding="utf-8") == "def f(x: int) -> int:\n    return x * 2\n"


def test_a_root_that_is_not_the_checkout_is_a_clear_error(project: Path) -> None:
    run = _sage_dev(project, "--check-only", "--root", str(project / "src"))
    assert run.returncode == 2 and run.stdout == ""  # a usage error, on stderr
    message = " ".join(run.stderr.split())
    assert "is not the SAGE checkout's root" in message
    assert f"did you mean --root {project}" in message


def test_outside_any_checkout_it_says_to_run_inside_one_or_pass_root(tmp_path: Path) -> None:
    run = _sage_dev(tmp_path / "proj", "--check-only", cwd=tmp_path)
    assert run.returncode == 2
    message = " ".join(run.stderr.split())
    assert "no SAGE checkout found" in message
    assert "pass --root PATH" in message


def test_a_missing_path_is_a_clear_error(project: Path) -> None:
    run = _sage_dev(project, "--check-only", "--root", str(project), "nope.py", cwd=project)
    assert run.returncode == 2
    assert "nope.py does not exist" in run.stderr


def test_a_missing_tool_is_named_with_how_to_install_it(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dev, "missing_modules", lambda modules: ["mypy"])
    result = CliRunner().invoke(dev.app, ["quality", "--check-only", "--root", str(project)])
    assert result.exit_code == 1  # the command cannot do its job here: a runtime failure
    assert "mypy is not installed" in result.stderr
    assert "make quality" in result.stderr
