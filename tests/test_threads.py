"""Thread counts shared between protosaga processes (issue 13): registration, shares, --threads."""

import json
import os
import subprocess
import sys

import pytest
import torch

from protosaga_core import threads
from protosaga_core.cli import GlobalOptions, global_options, main
from protosaga_core.threads import Running, ThreadBudget, other_processes, share_of_cores


def test_each_process_takes_an_equal_share_of_the_cores():
    assert [share_of_cores(2, others) for others in (0, 1, 2)] == [2, 1, 1]
    assert [share_of_cores(8, others) for others in (0, 1, 3, 7, 20)] == [8, 4, 2, 1, 1]


@pytest.fixture()
def other(tmp_path):
    """A live process registered as a viewer in tmp_path."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / f"{process.pid}.json").write_text(json.dumps({"pid": process.pid, "command": "view"}))
    yield process
    process.kill()
    process.wait()


def test_only_live_other_processes_count_and_dead_ones_are_swept(tmp_path, other):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{finished.stdout.strip()}.json"
    dead.write_text(json.dumps({"pid": int(finished.stdout), "command": "train"}))
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / f"{os.getpid()}.json").write_text(json.dumps({"pid": os.getpid(), "command": "me"}))
    assert other_processes(tmp_path) == [Running(other.pid, "view")]
    assert not dead.exists()


def test_a_budget_registers_shares_and_follows_others(tmp_path, other):
    before = torch.get_num_threads()
    try:
        budget = ThreadBudget("train", folder=tmp_path)
        assert json.loads((tmp_path / f"{os.getpid()}.json").read_text()) == {"pid": os.getpid(), "command": "train"}
        cores = threads.available_cores()
        assert budget.apply() == share_of_cores(cores, 1) == torch.get_num_threads()
        other.kill()
        other.wait()
        budget.rebalance()  # looked less than REBALANCE_S ago: nothing changes yet
        assert torch.get_num_threads() == share_of_cores(cores, 1)
        budget._checked -= threads.REBALANCE_S
        budget.rebalance()
        assert torch.get_num_threads() == cores  # alone again: every core
        assert ThreadBudget("view", requested=1, folder=tmp_path).apply() == 1 == torch.get_num_threads()
        budget.unregister()
        assert not (tmp_path / f"{os.getpid()}.json").exists()
        with pytest.raises(ValueError, match="at least 1"):
            ThreadBudget("view", requested=0, folder=tmp_path)
    finally:
        torch.set_num_threads(before)


def test_every_command_takes_threads_and_backend_anywhere(capsys):
    assert global_options(["train", "data", "--threads", "2", "-o", "x"]) == (["train", "data", "-o", "x"], GlobalOptions(2))
    assert global_options(["--threads=3", "info", "a.ply"]) == (["info", "a.ply"], GlobalOptions(3))
    assert global_options(["info", "a.ply"]) == (["info", "a.ply"], GlobalOptions())
    assert global_options(["segment", "s", "--backend", "torch", "--threads=1"]) == (["segment", "s"], GlobalOptions(1, "torch"))
    for bad in (["--threads", "0"], ["--threads", "two"], ["--threads"]):
        with pytest.raises(ValueError, match="positive integer"):
            global_options(bad)
    for bad in (["--backend", "mps"], ["--backend"]):
        with pytest.raises(ValueError, match="auto, torch, gsplat"):
            global_options(bad)
    assert main(["info", "missing.ply", "--threads", "0"]) == 2
    assert "--threads needs a positive integer" in capsys.readouterr().err
    # A finished command leaves no registration behind (tests and scripts call main in-process).
    assert main(["info", "missing.ply", "--threads", "1"]) == 2
    assert not (threads.running_dir() / f"{os.getpid()}.json").exists()


# --- issue 21: a thread count beyond any use is refused in one line ----------------------------------
def test_a_thread_count_far_beyond_the_cores_is_refused_before_anything_is_registered(tmp_path):
    cap = 4 * threads.available_cores()
    with pytest.raises(ValueError, match=rf"^--threads 100000: at most {cap} here \(4 per core"):
        global_options(["info", "a.ply", "--threads", "100000"])
    with pytest.raises(ValueError, match=rf"^--threads {cap + 1}: at most {cap} here"):
        global_options(["--threads", str(cap + 1)])
    assert global_options(["--threads", str(cap)]) == ([], GlobalOptions(cap))
    with pytest.raises(ValueError, match=rf"^--threads 100000: at most {cap} here"):
        ThreadBudget("view", requested=100000, folder=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing registered, nothing applied


def test_the_command_line_refuses_threads_100000_in_one_line(trained_scene_readonly):
    ply = trained_scene_readonly / "gaussians.ply"
    before = ply.read_bytes()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "protosaga_core.cli", "--threads", "100000", "info", str(ply)],
            capture_output=True, text=True, timeout=90,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("protosaga --threads 100000 info still ran after 90 s")
    assert result.returncode == 2 and result.stdout == "", (result.stdout, result.stderr)
    assert result.stderr.startswith("protosaga: --threads 100000: at most ") and result.stderr.count("\n") == 1, result.stderr
    assert ply.read_bytes() == before


def test_the_viewer_refuses_threads_100000_in_one_line(trained_scene_readonly):
    files = {path: path.read_bytes() for path in trained_scene_readonly.rglob("*") if path.is_file()}
    command = [sys.executable, "-m", "protosaga_app.viewer", str(trained_scene_readonly), "--threads", "100000", "--no-open-browser"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("protosaga-view --threads 100000 still ran after 90 s")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("protosaga-view: error: --threads 100000: at most ") and result.stderr.count("\n") == 1, result.stderr
    assert {path: path.read_bytes() for path in trained_scene_readonly.rglob("*") if path.is_file()} == files
