"""CI's rule (tests/conftest.py): with PROTOSAGA_NO_SKIPS=1 a test may skip only for want of hardware."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SKIPPING_TESTS = '''
import pytest

def test_needs_a_gpu():
    pytest.skip("hardware: needs a CUDA device")

def test_needs_shared_data():
    pytest.skip("../shared/data is absent")

@pytest.mark.skipif(True, reason="the browser tests need Debian's chromium package")
def test_needs_a_browser():
    pass
'''
SKIPPING_MODULE = '''
import pytest

pytest.importorskip("a_module_nobody_installed")


def test_never_collected():
    pass
'''


def run_pytest(folder: Path, test_file: str, source: str, strict: bool) -> subprocess.CompletedProcess:
    shutil.copy(Path(__file__).with_name("conftest.py"), folder / "conftest.py")
    (folder / test_file).write_text(source)
    env = {**os.environ, "PROTOSAGA_NO_SKIPS": "1" if strict else "0"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder / test_file)],
        capture_output=True, text=True, env=env, cwd=folder, timeout=120,
    )


@pytest.mark.parametrize("strict", [False, True])
def test_only_hardware_may_skip_in_ci(tmp_path, strict):
    run = run_pytest(tmp_path, "test_skips.py", SKIPPING_TESTS, strict)
    summary = run.stdout.strip().splitlines()[-1]
    if strict:
        assert run.returncode == 1 and "1 failed, 1 skipped, 1 error" in summary, run.stdout  # a skipif mark skips in setup
        assert "../shared/data is absent" in run.stdout and "chromium" in run.stdout
    else:
        assert run.returncode == 0 and "3 skipped" in summary, run.stdout


@pytest.mark.parametrize("strict", [False, True])
def test_a_module_skipped_at_collection_fails_in_ci(tmp_path, strict):
    run = run_pytest(tmp_path, "test_missing_module.py", SKIPPING_MODULE, strict)
    summary = run.stdout.strip().splitlines()[-1]
    if strict:
        assert run.returncode != 0 and "1 error" in summary and "a_module_nobody_installed" in run.stdout, run.stdout
    else:
        assert run.returncode == 5 and "1 skipped" in summary, run.stdout  # 5: no test ran
