"""The README's snippets work: every Python block runs, and every `protosaga` command it names exists."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from protosaga_core.cli import command_type

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.DOTALL)


def test_the_readme_has_python_blocks():
    assert PYTHON_BLOCKS


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"block{i}" for i in range(len(PYTHON_BLOCKS))])
def test_python_block_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files next to them
    exec(compile(block, f"{README}:python block", "exec"), {"__name__": "readme"})


def test_every_protosaga_command_in_the_readme_exists():
    known = {typing.get_args(option)[1].name for option in typing.get_args(command_type("cpu"))}
    named = set(re.findall(r"(?:^|`)protosaga ([a-z]+)", TEXT, flags=re.MULTILINE))  # in code, not in prose
    assert named and named <= known, f"the README names commands that do not exist: {sorted(named - known)}"
