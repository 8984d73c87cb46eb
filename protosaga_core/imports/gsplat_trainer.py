"""gsplat's example trainer (`examples/simple_trainer.py`), as `protosaga import` reads its result folder.

```
RESULT/                        --result-dir
  cfg.yml                      yaml.dump(vars(cfg)): data_dir, data_factor, normalize_world_space, ...
  ply/point_cloud_N.ply        with --save-ply, at step N (0-based: a 30k run saves N = 29999), written by
                               gsplat.exporter.export_splats (INRIA columns, no normals)
  ckpts/ckpt_N_rank{r}.pt      {"step": N, "splats": state dict of means, scales, quats, opacities, sh0, shN},
                               one per GPU rank, each holding its share of the Gaussians
```

Its COLMAP parser normalises the world by default (normalize_world_space: a similarity computed from the
cameras and the SfM points, frames.py) and saves no record of it, so the importer computes it again from
the same dataset. A step saved only as checkpoints is converted to a PLY by gsplat's own exporter.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..gaussians import Gaussians
from .sources import FoundSource
from .trainer_yaml import read_trainer_yaml

CONFIG_FILE = "cfg.yml"
PLY_DIR = "ply"
CKPT_DIR = "ckpts"
PLY_NAME = re.compile(r"point_cloud_(\d+)\.ply")
CKPT_NAME = re.compile(r"ckpt_(\d+)_rank(\d+)\.pt")
SPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def is_result(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() or (folder / PLY_DIR).is_dir() or (folder / CKPT_DIR).is_dir()


def saved_steps(result: Path) -> tuple[dict[int, Path], dict[int, list[Path]]]:
    """The steps saved as PLY, and as checkpoints (every rank's, in rank order)."""
    plys = {int(m.group(1)): p for p in _children(result / PLY_DIR) if (m := PLY_NAME.fullmatch(p.name))}
    ranked: dict[int, list[tuple[int, Path]]] = {}
    for path in _children(result / CKPT_DIR):
        if match := CKPT_NAME.fullmatch(path.name):
            ranked.setdefault(int(match.group(1)), []).append((int(match.group(2)), path))
    return plys, {step: [path for _, path in sorted(ranks)] for step, ranks in ranked.items()}


def _children(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []


def find_result(result: Path, iteration: int | None) -> FoundSource:
    """The latest step of a gsplat result folder (or `iteration`), its PLY where saved, else its checkpoints.

    Raises:
        ValueError: no PLY or checkpoint saved, a missing --iteration (those present are listed), or a
            malformed cfg.yml.
    """
    plys, checkpoints = saved_steps(result)
    steps = sorted(set(plys) | set(checkpoints))
    if not steps:
        raise ValueError(f"{result}: a gsplat result folder with no {PLY_DIR}/point_cloud_<N>.ply or {CKPT_DIR}/ckpt_<N>_rank0.pt saved")
    if iteration is None:
        iteration = steps[-1]
    elif iteration not in steps:
        raise ValueError(f"{result}: no step {iteration} saved; it holds steps {', '.join(map(str, steps))}")
    config = read_trainer_yaml(result / CONFIG_FILE) if (result / CONFIG_FILE).is_file() else {}
    data_dir = config.get("data_dir")
    normalized = config.get("normalize_world_space")
    return FoundSource(
        "gsplat", result, plys.get(iteration), iteration, tuple(steps), tuple(checkpoints.get(iteration, ())),
        dataset_path=data_dir if isinstance(data_dir, str) and data_dir else None,
        config_file=result / CONFIG_FILE if config else None,
        normalized=normalized if isinstance(normalized, bool) else None,
    )


def read_checkpoints(paths: tuple[Path, ...]) -> Gaussians:
    """The Gaussians of a step's checkpoints, every rank's share concatenated (as gsplat's viewer does).

    Raises:
        ValueError: naming the file: not a gsplat checkpoint, or one trained with appearance optimisation
            (its colours are a network's, not SH coefficients).
    """
    shares = []
    for path in paths:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle and zip errors have no common base
            raise ValueError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error})") from None
        splats = payload.get("splats") if isinstance(payload, dict) else None
        if not isinstance(splats, dict):
            raise ValueError(f"{path}: not a gsplat trainer checkpoint (no 'splats' state dict)")
        missing = [key for key in SPLAT_KEYS if key not in splats]
        if missing:
            why = " (trained with --app-opt: its colours come from a network; save a PLY with --save-ply instead)" if "colors" in splats else ""
            raise ValueError(f"{path}: the splats lack {', '.join(missing)}{why}")
        shares.append({key: splats[key].float() for key in SPLAT_KEYS})
    joined = {key: torch.cat([share[key] for share in shares]) for key in SPLAT_KEYS}
    try:
        return Gaussians(**joined, features=torch.zeros(len(joined["means"]), 0))
    except ValueError as error:
        raise ValueError(f"{paths[0]}: {error}") from None
