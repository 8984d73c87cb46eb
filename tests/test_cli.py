import numpy as np
import pytest
import torch
from PIL import Image

from protosaga_core.cli import main
from protosaga_core.gaussians import Gaussians
from protosaga_core.io.ply import write_ply


def test_info_and_render_a_ply(tmp_path, capsys):
    gaussians = Gaussians.random_box(500, sh_degree=1, feature_dim=4, generator=torch.Generator().manual_seed(0))
    gaussians.opacities.fill_(2.0)
    ply = tmp_path / "scene.ply"
    write_ply(ply, gaussians)

    assert main(["info", str(ply)]) == 0
    out = capsys.readouterr().out
    assert "500" in out and "sh degree      1" in out and "feature dim    4" in out

    png = tmp_path / "view.png"
    assert main(["render", str(ply), "--output", str(png), "--width", "48", "--height", "32"]) == 0
    image = np.asarray(Image.open(png))
    assert image.shape == (32, 48, 3)
    assert image.std() > 5  # the random colourful box is in view, not a blank frame


def test_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "broken.ply"
    bad.write_text("not a ply")
    assert main(["info", str(bad)]) == 2
    assert "broken.ply" in capsys.readouterr().err


def test_help_speaks_to_users_and_lists_commands_in_workflow_order(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "protosaga_app" not in out and "never imports" not in out  # no notes for the project's developers
    assert "--backend" in out and "--threads" in out
    listed = out[out.index("{") + 1 : out.index("}")].split(",")
    assert listed[:2] == ["demo", "run"]
    stages = ["weights", "colmap", "masks", "train", "import", "features", "associate", "refine", "prototypes", "segment", "eval"]
    assert listed[2 : 2 + len(stages)] == stages
    assert set(listed[2 + len(stages) :]) == {"export", "info", "render", "metrics", "synth", "doctor"}


def test_a_render_on_a_backend_that_cannot_run_here_is_one_line(tmp_path, capsys):
    ply = tmp_path / "scene.ply"
    write_ply(ply, Gaussians.random_box(20, generator=torch.Generator().manual_seed(1)))
    status = main(["render", str(ply), "--output", str(tmp_path / "v.png"), "--backend", "gsplat"])
    err = capsys.readouterr().err.strip()
    if torch.cuda.is_available():
        assert status == 0
    else:
        assert status == 2 and err == "protosaga render: the gsplat backend needs CUDA tensors, got device cpu"
    assert main(["info", str(ply), "--backend", "fast"]) == 2
    assert "--backend must be one of auto, torch, gsplat" in capsys.readouterr().err


def test_doctor_reports_each_piece_with_its_fix(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    topics = [line[10:].split()[0] for line in lines if line.startswith("[")]
    assert topics[:2] == ["torch", "cpu"] and {"gsplat", "threads", "mobile_sam", "cache"} <= set(topics)
    weights = next(i for i, line in enumerate(lines) if " mobile_sam " in line)
    assert lines[weights].startswith("[missing]") and "not fetched" in lines[weights]
    assert "-> protosaga weights mobile_sam" in lines[weights + 1]
    cache = next(line for line in lines if " cache " in line)
    assert str(tmp_path / "empty-cache" / "protosaga") in cache and "GiB free" in cache
