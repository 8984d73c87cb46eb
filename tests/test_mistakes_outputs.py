"""Where commands write (issue 21): no output option of any command replaces a trained scene's own files,
links are followed (a loop of them is one line), and the user cache is checked before any work. Each case
is refused with one line naming the path and the problem, exit status 2, and leaves every input and
existing output byte-identical."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
import warnings
from pathlib import Path

import pytest
import tyro
from test_mistakes import TINY_TRAINING, fails, snapshot

from protosaga_core.cli import command_type, main
from protosaga_core.io.cache import cache_dir
from protosaga_core.io.scene_dir import SCENE_FORMAT

INPUTS = {"path", "scene", "gt", "pred", "dataset.root", "masks.checkpoint", "config.masks.checkpoint", "source", "dataset", "config.transform",
          "input"}
"""Path options that name what a command reads. Every other Path option of every command is an output,
and `test_no_output_option_of_any_command_replaces_a_scenes_files` checks it."""
MAKES_A_SCENE = {"train", "run", "demo", "import"}
"""Commands whose output is a scene folder: a scene itself is a valid one (their own rules say when it is
continued or replaced); anything inside a scene is not."""
OUTPUT_PLACES = ("exports", "segment")
"""Where a scene takes outputs (README, Safety): export writes exports/, segment segment/."""


def base_argv(command: str, scene: Path, dataset: Path) -> list[str]:
    """A command line that runs `command` on valid inputs, with the flag that lets it replace what exists,
    so that only the rule on scenes can refuse its output. A new command with an output option needs a row."""
    rows = {
        "render": ["render", str(scene / "gaussians.ply"), "--overwrite", "--width", "8", "--height", "8"],
        "synth": ["synth", "--overwrite"],
        "export": ["export", str(scene), "--overwrite"],
        "segment": ["segment", str(scene), "--overwrite"],
        "train": ["train", str(dataset), *TINY_TRAINING, "--overwrite"],
        "run": ["run", str(dataset), *TINY_TRAINING, "--force", "--masks.method", "simulated"],
        "demo": ["demo", "--no-view", *TINY_TRAINING, "--force", "--masks.method", "simulated"],
        "import": ["import", str(scene / "gaussians.ply"), "--dataset", str(dataset), "--skip-alignment-check"],
        "colmap": ["colmap", str(dataset / "images"), "--overwrite"],
    }
    assert command in rows, f"protosaga {command} has an output option: add a command line for it to base_argv"
    return rows[command]


def _path_fields(cls: type, prefix: str = "") -> typing.Iterator[str]:
    """The dotted names of the Path-typed fields of a dataclass, nested dataclasses included."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for field in dataclasses.fields(cls):
        leaves, kinds = [hints[field.name]], []
        while leaves:  # unwrap Annotated[...] and unions (Path | None)
            hint = leaves.pop()
            origin = typing.get_origin(hint)
            if origin is typing.Annotated:
                leaves.append(typing.get_args(hint)[0])
            elif origin in (typing.Union, types.UnionType):
                leaves.extend(typing.get_args(hint))
            else:
                kinds.append(hint)
        for kind in kinds:
            if dataclasses.is_dataclass(kind):
                yield from _path_fields(kind, f"{prefix}{field.name}.")
            elif kind is Path:
                yield f"{prefix}{field.name}"


def _spellings() -> dict[tuple[str, str], list[str]]:
    """(command, dotted field) -> its option strings on the command line ([] for a positional), as tyro
    builds them from the same dataclasses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        parser = tyro.extras.get_parser(command_type("cpu"))
    found = {}
    for action in parser._actions:
        for command, sub in (action.choices or {}).items() if isinstance(action.choices, dict) else ():
            for option in sub._actions:
                found[(command, option.dest.split(".", 1)[-1].replace("-", "_"))] = list(option.option_strings)
    return found


def output_options() -> dict[str, list[tuple[str, list[str]]]]:
    """Per command (from cli.command_type): each output option as (field, its option strings)."""
    spellings = _spellings()
    options: dict[str, list[tuple[str, list[str]]]] = {}
    for member in typing.get_args(command_type("cpu")):
        cls, *configs = typing.get_args(member)
        command = next(c.name for c in configs if getattr(c, "name", None))
        for name in _path_fields(cls):
            if name in INPUTS:
                continue
            assert (command, name) in spellings, f"protosaga {command}: no command-line option for the field {name}"
            options.setdefault(command, []).append((name, spellings[(command, name)]))
    return options


OUTPUT_OPTIONS = output_options()


def test_every_command_with_an_output_option_is_walked():
    """The walk below finds the output options from the commands themselves: today these seven commands
    have one; a new one is found (and needs a row in base_argv) without this list."""
    from protosaga_core.io.outputs import _SCENE_MARK

    assert set(OUTPUT_OPTIONS) >= {"render", "synth", "export", "segment", "train", "run", "demo"}
    assert SCENE_FORMAT.encode() in _SCENE_MARK.pattern  # the mark the checks look for is scene_dir's


def scene_targets(scene: Path) -> list[Path]:
    """The scene itself, each of its folders, each file at its top and the first file of each folder,
    outside its output places."""
    kept = [p for p in sorted(scene.rglob("*")) if p.relative_to(scene).parts[0] not in OUTPUT_PLACES]
    folders = [p for p in kept if p.is_dir()]
    files = [p for p in kept if p.is_file() and p.parent == scene]
    files += [next(p for p in sorted(folder.iterdir()) if p.is_file()) for folder in folders if any(p.is_file() for p in folder.iterdir())]
    return [scene, *folders, *files]


@pytest.mark.parametrize("command", sorted(OUTPUT_OPTIONS))
def test_no_output_option_of_any_command_replaces_a_scenes_files(command, trained_scene, trained_scene_readonly, capsys):
    dataset = trained_scene_readonly.parent / "data"
    before, data_before = snapshot(trained_scene), snapshot(dataset)
    targets = scene_targets(trained_scene)
    assert {trained_scene / "gaussians.ply", trained_scene / "labels.npy", trained_scene / "association"} <= set(targets)
    for field, spelling in OUTPUT_OPTIONS[command]:
        for target in targets:
            if command in MAKES_A_SCENE and target == trained_scene:
                continue
            argv = [*base_argv(command, trained_scene, dataset), *([spelling[-1]] if spelling else []), str(target)]
            message = fails(argv, capsys, f"{target}: is", "trained scene")
            assert str(trained_scene.resolve()) in message, (field, message)
            assert snapshot(trained_scene) == before, (field, target)
    assert snapshot(dataset) == data_before


# ------------------------------------------------------------------------- the cases of the issue


@pytest.mark.parametrize("name", ["gaussians.ply", "labels.npy", "association/frame_0000.png"])
def test_render_never_writes_over_a_scenes_own_file(name, trained_scene, capsys):
    before = snapshot(trained_scene)
    target = trained_scene / name
    fails(["render", str(trained_scene / "gaussians.ply"), "--output", str(target), "--overwrite"], capsys,
          f"{target}: is inside the trained scene {trained_scene.resolve()}", f"write to {trained_scene.resolve() / 'exports'}/ or outside")
    assert snapshot(trained_scene) == before


def test_render_follows_a_link_into_a_scene(trained_scene, tmp_path, capsys):
    before = snapshot(trained_scene)
    (tmp_path / "pictures").symlink_to(trained_scene / "association", target_is_directory=True)
    target = tmp_path / "pictures" / "frame_0000.png"
    fails(["render", str(trained_scene / "gaussians.ply"), "--output", str(target), "--overwrite"], capsys,
          f"{target}: is inside the trained scene {trained_scene.resolve()}")
    assert snapshot(trained_scene) == before


def test_render_may_write_in_the_scenes_exports_folder(trained_scene, capsys):
    before = snapshot(trained_scene)
    assert main(["render", str(trained_scene / "gaussians.ply"), "--output", str(trained_scene / "exports" / "look.png"),
                 "--width", "8", "--height", "8"]) == 0
    assert (trained_scene / "exports" / "look.png").read_bytes().startswith(b"\x89PNG")
    assert {k: v for k, v in snapshot(trained_scene).items() if not k.startswith("exports")} == before


def test_synth_never_writes_a_dataset_into_a_scene(trained_scene, capsys):
    before = snapshot(trained_scene)
    for target in (trained_scene / "association", trained_scene / "exports" / "data"):
        fails(["synth", str(target), "--overwrite"], capsys, f"{target}: is inside the trained scene", "write outside the scene")
    assert snapshot(trained_scene) == before


def test_a_scene_json_of_another_program_makes_no_scene(trained_scene, tmp_path, capsys):
    from protosaga_core.io.outputs import is_trained_scene

    other = tmp_path / "other"
    other.mkdir()
    (other / "scene.json").write_text('{"format": "blender-scene"}')
    assert not is_trained_scene(other) and is_trained_scene(trained_scene)
    assert main(["render", str(trained_scene / "gaussians.ply"), "--output", str(other / "look.png"), "--width", "8", "--height", "8"]) == 0


# ------------------------------------------------------------------------------ loops of links


@pytest.fixture()
def loop(tmp_path) -> Path:
    """Two links that point at each other, alone in a folder."""
    folder = tmp_path / "links"
    folder.mkdir()
    (folder / "loop_a").symlink_to(folder / "loop_b")
    (folder / "loop_b").symlink_to(folder / "loop_a")
    return folder / "loop_a"


def test_export_to_a_loop_of_links_is_one_line(trained_scene, loop, capsys):
    before = snapshot(trained_scene)
    for target in (loop, loop / "x.ply"):
        fails(["export", str(trained_scene), "-o", str(target)], capsys, f"{target}: is a loop of symbolic links")
    assert snapshot(trained_scene) == before
    assert {p.name for p in loop.parent.iterdir()} == {"loop_a", "loop_b"} and os.readlink(loop) == str(loop.parent / "loop_b")


def test_render_to_a_loop_of_links_is_refused_before_any_work(trained_scene, loop, capsys):
    fails(["render", str(trained_scene / "gaussians.ply"), "--output", str(loop / "look.png")], capsys,
          f"{loop / 'look.png'}: is a loop of symbolic links")
    assert {p.name for p in loop.parent.iterdir()} == {"loop_a", "loop_b"} and os.readlink(loop) == str(loop.parent / "loop_b")


# ------------------------------------------------------------------------------ the user cache


def test_a_cache_home_that_is_a_file_is_refused_before_any_work(trained_scene, tmp_path, monkeypatch, capsys):
    in_the_way = tmp_path / "cache-file"
    in_the_way.write_bytes(b"someone's file")
    monkeypatch.setenv("XDG_CACHE_HOME", str(in_the_way))
    before, out = snapshot(trained_scene), tmp_path / "all.ply"
    fails(["export", str(trained_scene), "-o", str(out)], capsys,
          f"{in_the_way}: is not a folder", f"XDG_CACHE_HOME={in_the_way}", "point XDG_CACHE_HOME at a folder")
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert in_the_way.read_bytes() == b"someone's file" and snapshot(trained_scene) == before


def test_a_relative_cache_home_is_ignored_as_the_xdg_spec_says(trained_scene, tmp_path, monkeypatch, capsys):
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.chdir(work)
    assert cache_dir() == home / ".cache" / "protosaga"
    before = snapshot(trained_scene)
    assert main(["info", str(trained_scene / "gaussians.ply")]) == 0  # registers in the cache while it runs
    assert list(work.iterdir()) == [] and snapshot(trained_scene) == before
