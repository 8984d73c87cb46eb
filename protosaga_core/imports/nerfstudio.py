"""nerfstudio's splatfacto runs, as `protosaga import` reads them.

```
outputs/NAME/splatfacto/TIMESTAMP/        the run folder (RUN)
  config.yml                   yaml.dump of the TrainerConfig: pipeline.datamanager.dataparser.data is the dataset
  dataparser_transforms.json   {"transform": 3x4, "scale": s}: x_dp = s·(T·x) from the data's frame to the one
                               the Gaussians were trained in
  nerfstudio_models/step-N.ckpt
  splat.ply                    written by `ns-export gaussian-splat --load-config RUN/config.yml --output-dir RUN`
                               (INRIA layout, in the dataparser frame: the export does not undo the transform)
```

Which frame "the data's" is: nerfstudio's dataparser composes its own orientation T_o with the dataset's
`applied_transform` A (the map from the original capture's frame, e.g. COLMAP's, into the frame transforms.json
stores, x_tj = applied_scale·A·x_orig) and saves T = T_o·A, scale = s_o·applied_scale. So the saved transform
starts from the ORIGINAL frame: for a dataset read from its transforms.json the map is T∘(applied_scale·A)⁻¹;
for the original COLMAP model it is T itself (frames.py tries both, the alignment check decides).
"""

from __future__ import annotations

from pathlib import Path

from ..datasets.nerf import transform_files
from ..datasets.similarity import Similarity, SimilarityError
from ..io.bounded import BoundedReadError, read_json
from .sources import FoundSource
from .trainer_yaml import find_key, read_trainer_yaml

TRANSFORMS_FILE = "dataparser_transforms.json"
CONFIG_FILE = "config.yml"
EXPORT_NAME = "splat.ply"
LEGACY_APPLIED = [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]]
"""What nerfstudio assumes for a COLMAP conversion (DATA/colmap/sparse/0) whose transforms.json predates the
applied_transform field."""


def is_run(folder: Path) -> bool:
    return (folder / TRANSFORMS_FILE).is_file()


def find_run(run: Path, iteration: int | None) -> FoundSource:
    """The splat PLY exported into a nerfstudio run folder, its dataparser transform and the dataset config.yml names.

    Raises:
        ValueError: --iteration (an export is one iteration: the one it was made from), or no splat PLY yet.
    """
    if iteration is not None:
        raise ValueError(f"{run}: --iteration picks an INRIA or gsplat iteration; a nerfstudio export holds the one it was made from")
    plys = sorted(run.glob("*.ply"))
    ply = run / EXPORT_NAME if (run / EXPORT_NAME).is_file() else plys[0] if len(plys) == 1 else None
    if ply is None:
        found = f"it holds {', '.join(p.name for p in plys)}; give the one to import as SOURCE with --transform {run / TRANSFORMS_FILE}" if plys else (
            f"export it first: ns-export gaussian-splat --load-config {run / CONFIG_FILE} --output-dir {run}"
        )
        raise ValueError(f"{run}: a nerfstudio run without {EXPORT_NAME}; {found}")
    config_file = run / CONFIG_FILE
    data = None
    if config_file.is_file():
        config = read_trainer_yaml(config_file)
        data = find_key(find_key(config, "dataparser") or {}, "data") or find_key(config, "data")
    return FoundSource(
        "nerfstudio", run, ply, transform=run / TRANSFORMS_FILE,
        dataset_path=data if isinstance(data, str) and data else None,
        config_file=config_file if config_file.is_file() else None,
    )


def applied_frame(dataset_root: Path) -> Similarity | None:
    """x_tj = applied_scale·A·x_orig of a nerfstudio-format dataset (see the module docstring); None where its
    transforms file records none (and it is no COLMAP conversion that implies one).

    Raises:
        ValueError: naming the file: an applied_transform that is no rigid 3x4 / applied_scale no positive number.
    """
    for path, _ in transform_files(dataset_root):
        if not path.is_file():
            continue
        try:
            meta = read_json(path)
        except BoundedReadError as error:
            raise ValueError(str(error)) from None
        if not isinstance(meta, dict):
            return None
        applied = meta.get("applied_transform")
        if applied is None and (dataset_root / "colmap" / "sparse" / "0").is_dir():
            applied = LEGACY_APPLIED
        if applied is None:
            continue
        scale = meta.get("applied_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"{path}: applied_scale must be a number, got {scale!r:.40}")
        try:
            return Similarity.from_matrix(applied, f"{path} (applied_transform)", float(scale))
        except SimilarityError as error:
            raise ValueError(str(error)) from None
    return None
