"""One writer per scene (io/scene_lock.py): the lock file, refusals naming the holder, stale takeover, release
on every way out; and real `protosaga` processes writing one scene at once, interrupted and killed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from protosaga_core.io.scene_dir import SceneDir
from protosaga_core.io.scene_lock import LOCK_FILE, SceneLockedError, scene_lock

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"
HOST = socket.gethostname()
REFUSAL = re.compile(
    r"(?P<scene>.+) is being written by `(?P<command>[^`]+)` \(pid (?P<pid>\d+) on (?P<host>\S+), since "
    r"(?P<since>\d\d:\d\d:\d\d)\); wait for it to finish, or remove (?P<lock>.+) if that process is gone"
)


def fake_holder(root: Path, pid: int, host: str = HOST, started: datetime | None = None, command: str = "run") -> bytes:
    """A lock file as another process would have written it; its bytes."""
    started = started or datetime.now().astimezone()
    record = {"format": "protosaga-lock", "command": command, "pid": pid, "host": host, "started": started.isoformat(timespec="seconds")}
    raw = (json.dumps(record) + "\n").encode()
    (root / LOCK_FILE).write_bytes(raw)
    return raw


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


LIVE_PID = os.getppid()
"""Another live process of this user on this host (whatever started pytest)."""


# --- the lock itself ---------------------------------------------------------------------------------
def test_the_lock_file_names_its_holder_and_is_removed_at_the_end(tmp_path):
    with scene_lock(tmp_path, "train"):
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert (record["command"], record["pid"], record["host"]) == ("train", os.getpid(), HOST)
        assert abs(datetime.fromisoformat(record["started"]) - datetime.now().astimezone()) < timedelta(seconds=5)
    assert list(tmp_path.iterdir()) == []


def test_a_second_writer_is_refused_with_one_line_naming_the_holder(tmp_path):
    raw = fake_holder(tmp_path, LIVE_PID, started=datetime.now().astimezone().replace(hour=10, minute=41, second=3))
    with pytest.raises(SceneLockedError) as refused, scene_lock(tmp_path, "associate"):
        pytest.fail("entered a scene that another process is writing")
    assert str(refused.value) == (
        f"{tmp_path} is being written by `run` (pid {LIVE_PID} on {HOST}, since 10:41:03); wait for it to finish, "
        f"or remove {tmp_path / LOCK_FILE} if that process is gone"
    )
    assert (tmp_path / LOCK_FILE).read_bytes() == raw  # the holder's lock is untouched


def test_the_lock_is_reentrant_in_a_thread_and_refused_to_another_thread(tmp_path):
    refusals = []

    def other_thread():
        try:
            with scene_lock(tmp_path, "protosaga-view"):
                pass
        except SceneLockedError as error:
            refusals.append(str(error))

    with scene_lock(tmp_path, "run"):
        with scene_lock(tmp_path, "train"):  # `run` calling its stages
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
        assert json.loads((tmp_path / LOCK_FILE).read_text())["command"] == "run"  # the outer holder's record
    assert not (tmp_path / LOCK_FILE).exists()
    assert len(refusals) == 1 and f"being written by `run` (pid {os.getpid()} on {HOST}" in refusals[0]


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_the_lock_is_released_on_an_exception_and_on_ctrl_c(tmp_path, error):
    with pytest.raises(type(error)), scene_lock(tmp_path, "train"), scene_lock(tmp_path, "associate"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        raise error
    assert not (tmp_path / LOCK_FILE).exists()
    with scene_lock(tmp_path, "train"):  # and taken again at once
        pass


def test_a_waiting_writer_gets_the_lock_when_the_holder_finishes(tmp_path):
    fake_holder(tmp_path, LIVE_PID)
    threading.Timer(0.3, (tmp_path / LOCK_FILE).unlink).start()
    with scene_lock(tmp_path, "protosaga-view", wait=5.0):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_lock_whose_process_is_gone_is_taken_over_with_a_note(tmp_path, capsys):
    pid = dead_pid()
    fake_holder(tmp_path, pid)
    with scene_lock(tmp_path, "eval"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    note = capsys.readouterr().err.strip()
    assert note.startswith(f"note: {tmp_path / LOCK_FILE}: taking over the lock of `run` (pid {pid} on {HOST}, since ")
    assert note.endswith("that process is gone") and "\n" not in note


def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path, capsys):
    """A pid reused since (the lock records when its process started, where /proc tells)."""
    if not Path(f"/proc/{LIVE_PID}/stat").exists():
        pytest.skip("hardware: needs Linux's /proc")
    record = json.loads(fake_holder(tmp_path, LIVE_PID))
    (tmp_path / LOCK_FILE).write_text(json.dumps({**record, "process_start": 1}))
    with scene_lock(tmp_path, "eval"):
        pass
    assert "that process is gone" in capsys.readouterr().err


def test_a_lock_from_another_host_is_kept_unless_it_is_a_week_old(tmp_path, capsys):
    """Whether a process on another host (a scene on NFS) lives cannot be asked: its lock is respected."""
    raw = fake_holder(tmp_path, 1234, host="other-host", started=datetime.now().astimezone() - timedelta(days=2))
    with pytest.raises(SceneLockedError, match=r"being written by `run` \(pid 1234 on other-host, since "), scene_lock(tmp_path, "train"):
        pass
    assert (tmp_path / LOCK_FILE).read_bytes() == raw
    fake_holder(tmp_path, 1234, host="other-host", started=datetime.now().astimezone() - timedelta(days=8))
    with scene_lock(tmp_path, "train"):
        pass
    assert "days old and its host cannot be asked" in capsys.readouterr().err


def test_an_unreadable_lock_is_respected_while_young_and_taken_over_when_old(tmp_path):
    lock = tmp_path / LOCK_FILE
    lock.write_bytes(b"")  # a writer between creating its lock and filling it
    with pytest.raises(SceneLockedError, match="an unknown process"), scene_lock(tmp_path, "train"):
        pass
    os.utime(lock, (time.time() - 3600,) * 2)
    with scene_lock(tmp_path, "train"):
        pass
    assert not lock.exists()


def test_a_lock_taken_over_from_this_process_is_not_removed_by_it(tmp_path):
    with scene_lock(tmp_path, "run"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        raw = fake_holder(tmp_path, LIVE_PID)  # another host judged this one stale and took over
    assert (tmp_path / LOCK_FILE).read_bytes() == raw


def test_a_new_scene_folder_made_for_the_lock_is_removed_when_nothing_was_written(tmp_path):
    with pytest.raises(ValueError), scene_lock(tmp_path / "a" / "scene", "train", create=True):
        assert (tmp_path / "a" / "scene" / LOCK_FILE).exists()
        raise ValueError("the dataset is missing")
    assert list(tmp_path.iterdir()) == []


# --- who takes it ------------------------------------------------------------------------------------
def test_the_stage_functions_refuse_a_locked_scene_and_readers_do_not_wait(tmp_path):
    from protosaga_core.evaluate import EvalConfig, evaluate
    from protosaga_core.io.exports import export_scene
    from protosaga_core.method.association import AssociateConfig, associate
    from protosaga_core.method.prototypes import compute_prototypes
    from protosaga_core.method.segment import SegmentConfig, segment

    scene = SceneDir(tmp_path / "scene")
    scene.root.mkdir()
    fake_holder(scene.root, LIVE_PID)
    writers = [
        lambda: associate(scene, AssociateConfig(), progress=False),
        lambda: compute_prototypes(scene, progress=False),
        lambda: evaluate(scene, EvalConfig(), progress=False),
        lambda: segment(scene, SegmentConfig(), progress=False),
        lambda: export_scene(scene),
    ]
    for write in writers:
        with pytest.raises(SceneLockedError):
            write()
    # writing outside the scene only reads it: no lock, so the missing scene is what fails
    with pytest.raises(ValueError, match="missing"):
        export_scene(scene, output=tmp_path / "out.ply")
    with pytest.raises(ValueError, match="missing"):
        segment(scene, SegmentConfig(output=tmp_path / "maps"), progress=False)


def test_the_viewer_does_not_save_edits_while_another_process_writes_the_scene(tmp_path, monkeypatch):
    from protosaga_app import edit_log
    from protosaga_app.edit_log import EditLog
    from protosaga_app.selection import EditState
    from protosaga_core.io.exports import LabelsFingerprint

    monkeypatch.setattr(edit_log, "SAVE_WAIT_S", 0.2, raising=False)
    log = EditLog(tmp_path / "edits.json", LabelsFingerprint.of(np.array([0, 1, 2])))
    fake_holder(tmp_path, LIVE_PID)
    log.save(EditState(hidden=frozenset({1})))
    assert not log.path.exists()
    assert log.save_error is not None and f"being written by `run` (pid {LIVE_PID}" in log.save_error
    (tmp_path / LOCK_FILE).unlink()  # the writer finished: the next change saves
    log.save(EditState(hidden=frozenset({1, 2})))
    assert log.save_error is None and json.loads(log.path.read_text())["edits"] == [{"op": "hide", "ids": [1, 2]}]
    assert not (tmp_path / LOCK_FILE).exists()


# --- real processes ----------------------------------------------------------------------------------
RUN_FLAGS = ["--preset", "cpu", "--masks.method", "simulated", "--sh-degree", "0", "--threads", "1"]


def protosaga(args: list[str], out: Path, **popen) -> subprocess.Popen:
    """A `protosaga` process, its stdout and stderr in `out`.stdout / .stderr."""
    return subprocess.Popen(
        [sys.executable, "-m", "protosaga_app.command", *map(str, args)],
        cwd=ROOT,
        stdout=out.with_suffix(".stdout").open("w"),
        stderr=out.with_suffix(".stderr").open("w"),
        **popen,
    )


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the process ended ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.05)


def printed(out: Path, text: str) -> bool:
    return text in out.with_suffix(".stdout").read_text()


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def dataset(tmp_path) -> Path:
    return Path(shutil.copytree(DEMO, tmp_path / "data"))


def test_two_processes_on_one_scene_the_second_is_refused_and_changes_nothing(tmp_path, dataset):
    scene = tmp_path / "scene"
    first = protosaga(["run", dataset, "-o", scene, "--iterations", "100", "--seed", "1", *RUN_FLAGS], tmp_path / "first")
    try:
        wait_for(lambda: printed(tmp_path / "first", "[protosaga] train:"), first, "training")
        second = protosaga(["run", dataset, "-o", scene, "--iterations", "30", "--seed", "2", "--associate.grouping", "bank", *RUN_FLAGS], tmp_path / "second")
        assert second.wait(timeout=120) == 2
        assert first.poll() is None, "the first run ended before the second started: the test did not overlap them"
        assert first.wait(timeout=300) == 0, (tmp_path / "first.stderr").read_text()[-2000:]
    finally:
        first.kill()
    stderr = (tmp_path / "second.stderr").read_text().strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith("protosaga run: "), stderr
    refusal = REFUSAL.fullmatch(stderr[0].removeprefix("protosaga run: "))
    assert refusal and refusal["scene"] == str(scene) and refusal["lock"] == str(scene / LOCK_FILE)
    assert (refusal["command"], int(refusal["pid"]), refusal["host"]) == ("run", first.pid, HOST)
    assert "[protosaga]" not in (tmp_path / "second.stdout").read_text()

    # the scene is the first run's, all of it
    scene_dir = SceneDir(scene)
    meta = scene_dir.read_meta()
    assert meta.stages == ["train", "associate", "refine", "prototypes", "eval"]
    assert (meta.configs["train"]["seed"], meta.configs["train"]["iterations"]) == (1, 100)
    assert meta.configs["associate"]["grouping"] == "consensus"
    assert json.loads(scene_dir.association_json.read_text())["parameters"]["grouping"] == "consensus"
    assert len(scene_dir.read_labels(len(scene_dir.read_gaussians()))) > 0
    assert not (scene / LOCK_FILE).exists()

    # while a writer holds it, another command changes no byte of the scene or the dataset
    with scene_lock(scene, "run"):
        before = files(scene), files(dataset)
        third = protosaga(["associate", scene, "--grouping", "bank", "--threads", "1"], tmp_path / "third")
        assert third.wait(timeout=120) == 2
        assert (files(scene), files(dataset)) == before
    assert (tmp_path / "third.stderr").read_text().startswith(f"protosaga associate: {scene} is being written by `run` (pid {os.getpid()}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_writer_leaves_no_lock(tmp_path, dataset, sig):
    """Ctrl-C reaches the whole process group (a background process in a non-interactive shell ignores
    SIGINT, hence a session of its own); SIGTERM is sent as soon as the lock is taken, before training."""
    scene = tmp_path / "scene"
    writer = protosaga(["run", dataset, "-o", scene, "--iterations", "1000", *RUN_FLAGS], tmp_path / "writer", start_new_session=True)
    try:
        if sig == signal.SIGINT:
            wait_for(lambda: printed(tmp_path / "writer", "[protosaga] train:"), writer, "training")
        wait_for((scene / LOCK_FILE).exists, writer, "lock file")
        assert json.loads((scene / LOCK_FILE).read_text())["pid"] == writer.pid
        os.killpg(writer.pid, sig)
        assert writer.wait(timeout=120) == 130, (tmp_path / "writer.stderr").read_text()[-2000:]
    finally:
        writer.kill()
    assert not (scene / LOCK_FILE).exists()
    last = (tmp_path / "writer.stderr").read_text().strip().splitlines()[-1]
    assert last.startswith("protosaga run: ") and "run the same command again" in last
    if sig == signal.SIGTERM:  # before training, where only the lock turns SIGTERM into an interrupt
        assert "terminated (SIGTERM)" in last


def test_a_killed_writers_lock_is_taken_over_by_the_next_writer(tmp_path, dataset):
    scene = tmp_path / "scene"
    writer = protosaga(["run", dataset, "-o", scene, "--iterations", "30", *RUN_FLAGS], tmp_path / "writer", start_new_session=True)
    try:
        wait_for(lambda: printed(tmp_path / "writer", "[protosaga] associate:"), writer, "the end of training")
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait(timeout=60)
    finally:
        writer.kill()
    assert json.loads((scene / LOCK_FILE).read_text())["pid"] == writer.pid  # left behind
    export = protosaga(["export", scene, "--threads", "1"], tmp_path / "export")
    assert export.wait(timeout=120) == 0, (tmp_path / "export.stderr").read_text()
    note = f"note: {scene / LOCK_FILE}: taking over the lock of `run` (pid {writer.pid} on {HOST}, since "
    assert note in (tmp_path / "export.stderr").read_text()
    assert not (scene / LOCK_FILE).exists() and list((scene / "exports").glob("*.ply"))
