import numpy as np
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
