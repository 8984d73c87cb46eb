"""The YAML config files other trainers leave beside their splats, read as plain data.

gsplat's simple_trainer writes `cfg.yml` with `yaml.dump(vars(cfg))` and nerfstudio writes `config.yml` with
`yaml.dump(config)`: both hold Python-object tags (`!!python/object:nerfstudio...TrainerConfig`, the strategy
dataclass, `!!python/object/apply:pathlib.PosixPath [data, garden]`). Those are never constructed here (that
would import and run the trainers' code): an object becomes the mapping of its fields, a path the joined
string, anything else its plain value. Only a few fields are read (where the data was, whether the world was
normalised), so nothing else of the trainers needs to be understood.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import yaml

MAX_CONFIG_BYTES = 16 << 20
"""A trainer's config is a few kB; a file far larger is not one."""
PATH_CLASSES = ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path")


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader that reads Python-object tags as the plain data they hold."""


def _plain(loader: _PlainLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
        args = value.get("args") if isinstance(value, dict) else None  # object/apply with keyword form
    elif isinstance(node, yaml.SequenceNode):
        value = args = loader.construct_sequence(node, deep=True)
    else:
        return loader.construct_scalar(node)
    if suffix.rsplit(".", 1)[-1] in PATH_CLASSES and isinstance(args, list) and all(isinstance(a, str) for a in args):
        return str(PurePosixPath(*args)) if args else "."
    return value


_PlainLoader.add_multi_constructor("tag:yaml.org,2002:python/", _plain)


def read_trainer_yaml(path: Path) -> dict[str, Any]:
    """The mapping a trainer's YAML config holds (see the module docstring).

    Raises:
        ValueError: naming the file: too large, not YAML, or not a mapping at the top.
    """
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: {size:,} bytes; a trainer's config is a few kB")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_PlainLoader)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path}: not a readable YAML config ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings at the top, got {type(raw).__name__}")
    return raw


def find_key(config: Any, key: str) -> Any:
    """The first value stored under `key` anywhere in nested mappings (depth first), or None."""
    if isinstance(config, dict):
        if key in config:
            return config[key]
        for value in config.values():
            found = find_key(value, key)
            if found is not None:
                return found
    return None
