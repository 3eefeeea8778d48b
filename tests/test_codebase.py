"""Architecture and size rules of STYLE.md §2/§8, enforced in the test suite."""

import importlib.util
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "modelpress"
# Line budget for the IR and pass layers (tinygrad's sz.py idea): growth must be deliberate.
IR_AND_PASSES_BUDGET = 4500
PASS_FILE_BUDGET = 300
# Type-checked with mypy (settings in pyproject.toml's [tool.mypy]; strict).


def _code_lines(path: pathlib.Path) -> int:
    return sum(
        1 for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#")
    )


def test_ir_and_passes_stay_within_their_line_budget():
    files = [*PACKAGE.joinpath("ir").rglob("*.py"), *PACKAGE.joinpath("passes").rglob("*.py")]
    total = sum(_code_lines(f) for f in files)
    assert total <= IR_AND_PASSES_BUDGET, (
        f"ir/ + passes/ have {total} code lines > budget {IR_AND_PASSES_BUDGET}"
    )


def test_each_pass_file_is_small():
    too_big = {
        f.name: _code_lines(f)
        for f in PACKAGE.joinpath("passes").rglob("*.py")
        if _code_lines(f) > PASS_FILE_BUDGET
    }
    assert not too_big, f"pass files over {PASS_FILE_BUDGET} code lines: {too_big}"


def test_only_ir_io_imports_onnx_and_only_runtime_imports_onnxruntime():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if (
                stripped.startswith(("import onnx ", "from onnx import", "from onnx."))
                or stripped == "import onnx"
            ):
                if rel != "ir/io.py":
                    offenders.append(f"{rel}: {stripped}")
            if stripped.startswith(("import onnxruntime", "from onnxruntime")) and not rel.startswith(
                "runtime/"
            ):
                offenders.append(f"{rel}: {stripped}")
    assert not offenders, "layering violations:\n" + "\n".join(offenders)


def test_library_never_prints():
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in PACKAGE.rglob("*.py")
        if not path.relative_to(PACKAGE).as_posix().startswith("cli/")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if line.strip().startswith("print(")
    ]
    assert not offenders, f"print() outside cli/: {offenders}"


@pytest.mark.skipif(
    shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent)) is None, reason="ruff not installed"
)
def test_ruff_lint_is_clean():
    ruff = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent))
    # The library, its tests and the benchmarks: lint rules and formatting alike.
    for command in (["check", "src", "tests", "bench"], ["format", "--check", "src", "tests", "bench"]):
        result = subprocess.run([ruff, *command], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-4000:]


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed")
def test_mypy_is_clean():
    # The incremental cache makes reruns take seconds (a cold run ~30 s); mypy keeps its cache
    # folder out of git by itself.
    # No paths: mypy checks the `files` of [tool.mypy] in pyproject.toml, the one list of what is typed.
    command = [sys.executable, "-m", "mypy", "--cache-dir", str(ROOT / ".mypy_cache")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
