"""What `protosaga import SOURCE` was given, whichever trainer made it: one record for the importer.

SOURCE is recognised by the files its trainer leaves:

| trainer | SOURCE | the splats | the dataset it names | its frame |
|---|---|---|---|---|
| INRIA 3DGS (`train.py -m MODEL`) | MODEL/ | point_cloud/iteration_N/point_cloud.ply | cfg_args' source_path | the dataset's (inria.py) |
| nerfstudio (`ns-train splatfacto`, then `ns-export gaussian-splat --output-dir RUN`) | RUN/ (outputs/.../splatfacto/TIMESTAMP) | RUN/splat.ply | config.yml's dataparser data | dataparser_transforms.json (nerfstudio.py) |
| gsplat (`examples/simple_trainer.py --result-dir RESULT`) | RESULT/ | ply/point_cloud_N.ply (`--save-ply`), else ckpts/ckpt_N_rank*.pt | cfg.yml's data_dir | normalised when cfg.yml's normalize_world_space (gsplat_trainer.py) |
| any other | a splat PLY in the INRIA layout | the file | --dataset | the dataset's, or --transform |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .inria import InriaCamera

SourceKind = Literal["inria", "nerfstudio", "gsplat", "ply"]


@dataclass(frozen=True)
class FoundSource:
    """What `protosaga import SOURCE` found.

    Attributes:
        kind: the trainer recognised (see the module docstring).
        source: the path given.
        ply: the splat PLY to import; None for a gsplat run saved as checkpoints only.
        checkpoints: gsplat checkpoints of the chosen step, one per rank (read when `ply` is None).
        iteration: the saved iteration (step) chosen, or None for a bare PLY.
        iterations: every one the folder holds, ascending; () for a bare PLY.
        cameras: INRIA's cameras.json entries, or None.
        dataset_path: the dataset the trainer's config names (a path on the training machine), or None.
        config_file: that config (named in messages), or None.
        white_background: whether the model was trained over white rather than black.
        transform: nerfstudio's dataparser_transforms.json, or None.
        normalized: gsplat's normalize_world_space; None where unknown (no cfg.yml) or not gsplat.
    """

    kind: SourceKind
    source: Path
    ply: Path | None
    iteration: int | None = None
    iterations: tuple[int, ...] = ()
    checkpoints: tuple[Path, ...] = ()
    cameras: list[InriaCamera] | None = None
    dataset_path: str | None = None
    config_file: Path | None = None
    white_background: bool = False
    transform: Path | None = None
    normalized: bool | None = None

    @property
    def described(self) -> str:
        """The splats in words, for messages: the PLY, or the checkpoints."""
        if self.ply is not None:
            return str(self.ply)
        return f"{self.checkpoints[0]}" + (f" (+{len(self.checkpoints) - 1} ranks)" if len(self.checkpoints) > 1 else "")


def find_source(source: Path, iteration: int | None = None) -> FoundSource:
    """Recognise SOURCE (see the module docstring) and pick its iteration (default: the latest).

    Raises:
        FileNotFoundError / ValueError: one line naming the path and what it expected.
    """
    from . import gsplat_trainer, inria, nerfstudio

    if not source.exists():
        raise FileNotFoundError(
            f"{source}: no such file or folder; give a splat PLY or a trainer's output folder (INRIA MODEL/, "
            "nerfstudio's outputs/.../splatfacto/TIMESTAMP/, gsplat's --result-dir)"
        )
    if source.is_dir() and nerfstudio.is_run(source):
        return nerfstudio.find_run(source, iteration)
    if source.is_dir() and gsplat_trainer.is_result(source):
        return gsplat_trainer.find_result(source, iteration)
    return inria.find_inria(source, iteration)
