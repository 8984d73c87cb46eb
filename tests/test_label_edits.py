"""Merges and splits of the per-Gaussian labels, and Eq. 17 sums kept exact under them."""

import numpy as np
import pytest
import torch

from protosaga_core.method.label_edits import (
    Merge,
    Split,
    ViewSums,
    apply_label_edits,
    instances_after,
    new_instance_id,
    split_region,
)
from protosaga_core.method.prototypes import view_prototypes


def test_edits_apply_in_order_to_a_copy():
    labels = np.array([0, 3, 7, 7, 3, 5], dtype=np.int32)
    edits = (Merge(3, 7), Split.of(8, [5, 1, 1]), Merge(8, 5))
    edited = apply_label_edits(labels, edits)
    # 7 joins 3; Gaussians 1 and 5 leave 3 and 5 for 8; then the rest of 5 (none) joins 8
    assert edited.tolist() == [0, 8, 3, 3, 3, 8] and edited.dtype == labels.dtype
    assert labels.tolist() == [0, 3, 7, 7, 3, 5]
    assert apply_label_edits(labels, (Split.of(8, [5, 1]), Merge(3, 7))).tolist() == [0, 8, 3, 3, 3, 8]
    assert instances_after(frozenset({3, 5, 7}), edits) == {3, 8}
    assert new_instance_id({3, 5, 7}, edits) == 9 and new_instance_id((), ()) == 1
    with pytest.raises(ValueError, match="Gaussian 6, but there are 6"):
        apply_label_edits(labels, (Split.of(9, [6]),))


def test_splits_are_hashable_values_and_refuse_nonsense():
    assert Split.of(4, [3, 1, 3]) == Split.of(4, np.array([1, 3])) and hash(Split.of(4, [3, 1])) == hash(Split.of(4, [1, 3]))
    assert Split.of(4, [3, 1]).index.tolist() == [1, 3] and "2 Gaussians" in repr(Split.of(4, [3, 1]))
    for instance_id, index in ((0, [1]), (4, []), (4, [-1]), (4, [0.5])):
        with pytest.raises(ValueError):
            Split.of(instance_id, index)
    for keep, absorb in ((3, 3), (0, 7), (3, -1)):
        with pytest.raises(ValueError):
            Merge(keep, absorb)


def random_view(seed: int, ids: int = 5, size: int = 24, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, size, dim, generator=generator), torch.randint(0, ids + 1, (size, size), generator=generator)


@pytest.mark.parametrize("seed", range(3))
def test_sums_under_merges_and_moves_equal_eq_17_on_the_edited_mask(seed):
    features, mask = random_view(seed)
    sums = ViewSums.of(features, mask)
    for got, want in zip(sums.prototypes(), view_prototypes(features, mask)):
        torch.testing.assert_close(got, want)

    merged_mask = torch.where(mask == 4, 2, mask)
    merged = sums.merge(2, 4)
    for got, want in zip(merged.prototypes(), view_prototypes(features, merged_mask)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    # A split whose rendered labels cover the left half: pixels of its sources (2 and 3) there move to 9.
    rendered = torch.zeros_like(mask)
    rendered[:, : mask.shape[1] // 2] = 9
    region = split_region(merged_mask, rendered, 9, torch.tensor([2, 3]))
    assert region.any() and not (region & ~torch.isin(merged_mask, torch.tensor([2, 3]))).any()
    moved = merged.move(ViewSums.of(features, torch.where(region, merged_mask, 0)), 9)
    split_mask = torch.where(region, 9, merged_mask)
    for got, want in zip(moved.prototypes(), view_prototypes(features, split_mask)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_an_instance_whose_every_pixel_moves_leaves_the_view():
    features, _ = random_view(0, size=4)
    mask = torch.tensor([[1, 1, 2, 2]] * 4)
    sums = ViewSums.of(features, mask)
    moved = sums.move(ViewSums.of(features, torch.where(mask == 2, mask, 0)), 7)
    assert moved.ids.tolist() == [1, 7] and moved.counts.tolist() == [8, 8]
    with pytest.raises(ValueError, match="lacks"):
        sums.move(ViewSums.of(features, torch.full_like(mask, 5)), 7)
