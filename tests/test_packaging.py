"""The README's test command is what CI runs, and the console scripts resolve."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.strip().splitlines()]


def test_ci_runs_the_readme_test_command():
    test_commands = [c for c in readme_commands() if "pytest" in c]
    assert len(test_commands) == 1
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_commands[0] in ci_lines
    assert "python -m pip install torch==2.14.1 torchvision==0.29.1" in ci_lines


def test_console_scripts_are_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'protosaga = "protosaga_app.command:main"' in text
    assert 'protosaga-view = "protosaga_app.viewer:main"' in text


def test_viewer_entry_point_runs_and_documents_its_options():
    result = subprocess.run(
        [sys.executable, "-m", "protosaga_app.viewer", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0
    assert "SCENE" in result.stdout and "--host" in result.stdout and "127.0.0.1" in result.stdout


def test_the_core_never_imports_the_app():
    """protosaga_core is the library; protosaga_app (viewer, the `protosaga` entry point) sits on top."""
    code = (
        "import importlib, pkgutil, sys, protosaga_core\n"
        "for module in pkgutil.walk_packages(protosaga_core.__path__, 'protosaga_core.'):\n"
        "    importlib.import_module(module.name)\n"
        "print(sorted(name for name in sys.modules if name.startswith('protosaga_app')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
