"""Ordinary mistakes on the command line (issue 11): each is refused with a message naming the file and
the problem, exit status 2, and leaves every input and existing output byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import QUICK_TRAINING

import protosaga_core.method.association as association_module
import protosaga_core.method.prototypes as prototypes_module
import protosaga_core.method.refine as refine_module
from protosaga_core.cli import main
from protosaga_core.io.scene_dir import SceneDir

TINY_TRAINING = ["--preset", "cpu", "--iterations", "2", "--sh-degree", "0"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and the sha256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def fails(argv: list[str], capsys, *expected: str) -> str:
    """Run the CLI, expect exit status 2 and every `expected` piece in its one-line message."""
    capsys.readouterr()
    assert main(argv) == 2
    message = capsys.readouterr().err.splitlines()[-1]  # after any progress bar
    assert message.startswith(f"protosaga {argv[0]}: "), message
    assert "Traceback" not in message
    for piece in expected:
        assert piece in message, message
    return message


@pytest.fixture()
def dataset(trained_scene_readonly) -> Path:
    """The trained scene's dataset (with masks); tests only read it."""
    return trained_scene_readonly.parent / "data"


# -------------------------------------------------------------------------------- 1. export over a scene


def test_export_never_replaces_the_scenes_own_files(trained_scene, capsys):
    before = snapshot(trained_scene)
    fails(["export", str(trained_scene), "-o", str(trained_scene / "gaussians.ply")], capsys,
          "gaussians.ply: is inside the trained scene", "exports/")
    fails(["export", str(trained_scene), "-o", str(trained_scene / "association" / "x.ply")], capsys, "inside the trained scene")
    assert snapshot(trained_scene) == before
    assert main(["export", str(trained_scene), "-o", str(trained_scene / "exports" / "all.ply")]) == 0


def test_export_refuses_an_existing_file_unless_overwrite(trained_scene, tmp_path, capsys):
    existing = tmp_path / "mine.ply"
    existing.write_bytes(b"precious")
    fails(["export", str(trained_scene), "-o", str(existing)], capsys, "mine.ply: exists; add --overwrite")
    assert existing.read_bytes() == b"precious"
    fails(["export", str(trained_scene), "-o", str(tmp_path)], capsys, "is a folder")
    assert main(["export", str(trained_scene), "-o", str(existing), "--overwrite"]) == 0
    assert existing.read_bytes().startswith(b"ply")


# ------------------------------------------------------------------------------ 2. train over a scene


def test_train_refuses_an_existing_scene_without_resume_or_overwrite(dataset, trained_scene, tmp_path, capsys):
    before = snapshot(trained_scene)
    fails(["train", str(dataset), "-o", str(trained_scene), *TINY_TRAINING], capsys,
          "already holds a trained scene", "--resume", "--overwrite")
    assert snapshot(trained_scene) == before

    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    shutil.copy(trained_scene / "checkpoints" / "last.pt", interrupted / "checkpoints" / "last.pt")
    fails(["train", str(dataset), "-o", str(interrupted), *TINY_TRAINING], capsys, "interrupted training")

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    fails(["train", str(dataset), "-o", str(other), *TINY_TRAINING], capsys, "holds other files")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    fails(["train", str(dataset), "-o", str(a_file), *TINY_TRAINING], capsys, "exists and is not a folder")
    assert (other / "notes.txt").read_text() == "mine" and a_file.read_text() == "x"


def test_train_overwrite_starts_again_and_resets_the_later_stages(dataset, trained_scene, capsys):
    assert SceneDir(trained_scene).read_meta().stages[:4] == ["train", "associate", "refine", "prototypes"]
    assert main(["train", str(dataset), "-o", str(trained_scene), *TINY_TRAINING, "--overwrite"]) == 0
    meta = SceneDir(trained_scene).read_meta()
    assert meta.stages == ["train"] and meta.configs["train"]["iterations"] == 2


# ------------------------------------------------------------------------ 3. run with changed inputs


def test_run_reuses_a_stage_only_with_the_same_dataset_and_flags(dataset, trained_scene, tmp_path, capsys):
    other = tmp_path / "other_data"
    shutil.copytree(dataset, other)
    before = snapshot(trained_scene)
    fails(["run", str(other), "-o", str(trained_scene), *QUICK_TRAINING], capsys, f"was made from {dataset.resolve()}", "--force")
    assert snapshot(trained_scene) == before

    # Same dataset and flags: every stage reused, and said so.
    assert main(["run", str(dataset), "-o", str(trained_scene), *QUICK_TRAINING]) == 0
    out = capsys.readouterr().out
    for stage in ("train", "associate", "refine", "prototypes"):
        assert f"[protosaga] {stage}: done earlier with these flags; reused" in out

    # A changed association flag reruns association and what follows it, not training.
    assert main(["run", str(dataset), "-o", str(trained_scene), *QUICK_TRAINING, "--associate.grouping", "bank"]) == 0
    out = capsys.readouterr().out
    assert "[protosaga] train: done earlier with these flags; reused" in out
    assert "[protosaga] associate: flags changed since it ran (grouping consensus -> bank)" in out
    assert "[protosaga] refine: not done yet" in out and "[protosaga] prototypes: not done yet" in out
    assert SceneDir(trained_scene).read_meta().configs["associate"]["grouping"] == "bank"


# -------------------------------------------------------- 4. an interrupted stage keeps the scene's state


@pytest.mark.parametrize("stage", ["associate", "refine", "prototypes"])
def test_an_interrupted_stage_leaves_the_scene_as_it_was(trained_scene, monkeypatch, capsys, stage):
    before = snapshot(trained_scene)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if stage == "associate":  # after some label maps were written
        original = association_module.save_label_map
        calls = {"n": 0}

        def save_then_interrupt(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        monkeypatch.setattr(association_module, "save_label_map", save_then_interrupt)
    elif stage == "refine":  # while the features learn
        monkeypatch.setattr(refine_module, "fit_features", interrupt)
    else:  # after the prototypes were computed, while labelling the Gaussians
        monkeypatch.setattr(prototypes_module, "lifted_gaussian_labels", interrupt)
    assert main([stage, str(trained_scene)]) == 130
    message = capsys.readouterr().err
    assert f"protosaga {stage}: interrupted" in message and "as they were" in message and "--resume" not in message
    monkeypatch.undo()
    after = snapshot(trained_scene)
    partial = [name for name in after if ".partial" in name]
    assert {k: v for k, v in after.items() if k not in partial} == before
    assert main(["associate", str(trained_scene)]) == 0  # the next run cleans up and finishes
    assert not any(".partial" in name for name in snapshot(trained_scene))


# ------------------------------------------------------------------------ 6. a foreign checkpoint


def test_resume_refuses_another_scenes_checkpoint(dataset, trained_scene, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    (foreign / "checkpoints").mkdir(parents=True)
    checkpoint = torch.load(trained_scene / "checkpoints" / "last.pt", weights_only=True)
    checkpoint["classifiers"] = checkpoint["classifiers"][:3]  # another scene: other views and masks
    checkpoint["fingerprint"] = "0" * 64
    torch.save(checkpoint, foreign / "checkpoints" / "last.pt")
    before = snapshot(foreign)
    fails(["train", str(dataset), "-o", str(foreign), *TINY_TRAINING, "--resume"], capsys,
          "last.pt: this checkpoint was written for other training views or masks")
    assert snapshot(foreign) == before


# ------------------------------------------------------------------- 8. messages instead of tracebacks


def test_bad_files_give_one_line_naming_the_file(trained_scene, tmp_path, capsys):
    fails(["info", str(tmp_path)], capsys, f"{tmp_path}: Is a directory")
    fails(["render", str(trained_scene / "gaussians.ply"), "--output", str(tmp_path)], capsys, "is a folder")
    empty = tmp_path / "empty.ply"
    empty.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 0\nproperty float x\nend_header\n")
    fails(["info", str(empty)], capsys, "empty.ply", "no Gaussians")


def test_interrupt_messages_name_what_resumes(dataset, tmp_path, monkeypatch, capsys):
    import protosaga_core.cli as cli_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "generate_masks", interrupted)
    assert main(["masks", str(dataset)]) == 130
    assert "protosaga masks: interrupted; run the same command again: the views already done are kept" in capsys.readouterr().err
    monkeypatch.setattr(cli_module, "train", interrupted)
    assert main(["train", str(dataset), "-o", str(tmp_path / "s"), *TINY_TRAINING]) == 130
    assert "protosaga train: interrupted; the checkpoint is saved: run the same command with --resume" in capsys.readouterr().err


# ---------------------------------------------------------------------------- 9. flags as documented


def test_segment_takes_dash_o_and_keeps_out_of_the_scene(trained_scene, tmp_path, capsys):
    out = tmp_path / "labels"
    assert main(["segment", str(trained_scene), "-o", str(out)]) == 0
    assert sorted(p.suffix for p in out.iterdir()) and all(p.suffix == ".png" for p in out.iterdir())
    fails(["segment", str(trained_scene), "-o", str(out)], capsys, "already holds files", "--overwrite")
    assert main(["segment", str(trained_scene), "-o", str(out), "--overwrite"]) == 0
    before = snapshot(trained_scene)
    fails(["segment", str(trained_scene), "-o", str(trained_scene / "association")], capsys, "inside the trained scene")
    assert snapshot(trained_scene) == before


# ---------------------------------------------------------------------------------------- 10. limits


def test_sizes_and_counts_are_checked_before_any_work(dataset, trained_scene, tmp_path, capsys):
    out = tmp_path / "big.png"
    fails(["render", str(trained_scene / "gaussians.ply"), "--output", str(out), "--width", "100000", "--height", "100000"],
          capsys, "--width and --height must be 1..4096")
    assert not out.exists()
    for iterations in ("0", "-1"):
        fails(["train", str(dataset), "-o", str(tmp_path / "s"), "--preset", "cpu", "--iterations", iterations], capsys,
              f"--iterations must be at least 1, got {iterations}")
    assert not (tmp_path / "s").exists()
    existing = tmp_path / "render.png"
    existing.write_bytes(b"mine")
    fails(["render", str(trained_scene / "gaussians.ply"), "--output", str(existing)], capsys, "exists; add --overwrite")
    assert existing.read_bytes() == b"mine"


def test_stale_temporaries_of_a_killed_write_are_removed_by_the_next_run(dataset, trained_scene, capsys):
    checkpoints = trained_scene / "checkpoints"
    stale = checkpoints / ".last.pt.abc123.tmp"  # what atomic_open leaves when kill -9 hits a checkpoint write
    stale.write_bytes(b"half a checkpoint")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    live = trained_scene / ".scene.json.def456.tmp"  # a young one may belong to a writer still running
    live.write_bytes(b"{}")
    assert main(["prototypes", str(trained_scene)]) == 0
    assert not stale.exists() and live.exists()
    assert json.loads((trained_scene / "scene.json").read_text())["stages"][-1] == "prototypes"
