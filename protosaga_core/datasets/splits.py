"""Which views are for training and which for testing.

Rules, in the order "auto" tries them:
1. files: `<root>/train.txt` / `<root>/test.txt` listing view names (stems; an image suffix is tolerated), or the
   split a layout states itself (NeRF's `transforms_{train,test}.json`). With only one list, every view not on it
   belongs to the other split.
2. prefix: every name starts with `train_` or `test_` (Gaga's Replica and ScanNet preparations).
3. holdout: LLFF's convention, the views at index % 8 == 0 after sorting by name are test views.
"train-only" puts every view in training (no evaluation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .common import IMAGE_SUFFIXES, DatasetError
from .scene import Split

SplitRule = Literal["auto", "files", "prefix", "holdout", "train-only"]
HOLDOUT_EVERY = 8
PREFIXES: dict[Split, str] = {"train": "train_", "test": "test_"}


def assign_splits(
    names: list[str], stated: list[Split | None], root: Path, rule: SplitRule = "auto"
) -> list[Split]:
    """The split of each view.

    Args:
        names: view names, sorted.
        stated: the split each view's layout states, or None.
        root: the dataset folder holding train.txt / test.txt.
        rule: one of SplitRule (see the module docstring).

    Returns:
        one "train" / "test" per name.
    """
    if rule == "train-only":
        return ["train"] * len(names)
    if rule == "holdout":
        return holdout_splits(names)
    if rule in ("auto", "files"):
        splits = list_file_splits(names, root)
        if splits is None and names and all(split is not None for split in stated):
            splits = list(stated)
        if splits is not None:
            return splits
        if rule == "files":
            raise DatasetError(
                f"{root}: split 'files' needs train.txt / test.txt or transforms_{{train,test}}.json"
            )
    splits = prefix_splits(names)
    if splits is not None:
        return splits
    if rule == "prefix":
        unprefixed = [name for name in names if not name.startswith(tuple(PREFIXES.values()))]
        raise DatasetError(
            f"{root}: split 'prefix' needs every name to start with train_ or test_, not {unprefixed[:5]}"
        )
    return holdout_splits(names)


def holdout_splits(names: list[str]) -> list[Split]:
    return ["test" if index % HOLDOUT_EVERY == 0 else "train" for index in range(len(names))]


def prefix_splits(names: list[str]) -> list[Split] | None:
    """The split named by each prefix, or None unless every name has one."""
    splits: list[Split] = []
    for name in names:
        matches = [split for split, prefix in PREFIXES.items() if name.startswith(prefix)]
        if not matches:
            return None
        splits.append(matches[0])
    return splits


def list_file_splits(names: list[str], root: Path) -> list[Split] | None:
    """Splits from train.txt / test.txt, or None when neither exists."""
    listed = {split: (root / f"{split}.txt") for split in PREFIXES if (root / f"{split}.txt").is_file()}
    if not listed:
        return None
    known = set(names)
    members: dict[Split, set[str]] = {}
    for split, path in listed.items():
        members[split] = read_name_list(path)
        unknown = sorted(members[split] - known)
        if unknown:
            raise DatasetError(f"{path}: lists names that are not views of this dataset: {unknown[:5]}")
    both = sorted(members.get("train", set()) & members.get("test", set()))
    if both:
        raise DatasetError(f"{root}: names listed in both train.txt and test.txt: {both[:5]}")
    if len(members) == 1:
        (split, chosen), = members.items()
        other: Split = "test" if split == "train" else "train"
        return [split if name in chosen else other for name in names]
    unlisted = [name for name in names if name not in members["train"] and name not in members["test"]]
    if unlisted:
        raise DatasetError(f"{root}: views in neither train.txt nor test.txt: {unlisted[:5]}")
    return ["train" if name in members["train"] else "test" for name in names]


def read_name_list(path: Path) -> set[str]:
    """Names, one a line; blank lines and '#' comments skipped, a trailing image suffix dropped."""
    names = set()
    for line in path.read_text().splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path_entry = Path(entry)
        names.add(path_entry.stem if path_entry.suffix in IMAGE_SUFFIXES else path_entry.name)
    return names
