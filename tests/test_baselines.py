"""The Table 4 baselines on hand-made tensors: k-means and its prototypes, the Cls model's prediction
(`segment --method kmeans|cls` end to end: tests/test_evaluate.py)."""

import pytest
import torch

from protosaga_core.method.baselines import ClsModel, kmeans, kmeans_prototypes
from protosaga_core.method.prototypes import classify


def test_kmeans_recovers_separated_clusters_deterministically():
    generator = torch.Generator().manual_seed(1)
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    truth = torch.arange(3).repeat_interleave(20)
    points = centres[truth] + 0.1 * torch.randn(60, 2, generator=generator)
    found, assignment = kmeans(points, 3, torch.Generator().manual_seed(0), restarts=3)
    # The same partition, whatever the cluster numbering.
    assert len({(int(t), int(a)) for t, a in zip(truth, assignment)}) == 3
    torch.testing.assert_close(found[assignment[[0, 20, 40]]], centres, atol=0.1, rtol=0)
    again, _ = kmeans(points, 3, torch.Generator().manual_seed(0), restarts=3)
    assert torch.equal(found, again)
    with pytest.raises(ValueError, match="k-means"):
        kmeans(points[:2], 3, generator)


def test_kmeans_prototypes_map_clusters_to_majority_ids():
    # Two views; instance 3 is seen twice along +x, instance 8 along +y and once (mislabelled) near +x.
    view_ids = [torch.tensor([3, 8]), torch.tensor([3, 8])]
    view_vectors = [torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.1], [0.9, 0.05]])]
    prototypes = kmeans_prototypes(view_ids, view_vectors, seed=0, restarts=4)
    assert len(prototypes) == 2
    by_id = dict(zip(prototypes.ids.tolist(), prototypes.vectors))
    assert set(by_id) == {3, 8}  # the +x cluster holds 3, 3, 8: majority 3
    assert by_id[3][0] > by_id[3][1] and by_id[8][1] > by_id[8][0]
    assert sorted(prototypes.num_views.tolist()) == [1, 3]
    labels = classify(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), prototypes)
    assert labels.tolist() == [3, 8]


def test_cls_model_never_predicts_the_no_mask_class():
    # Class 0 ("no mask") has by far the largest logit, yet only instance classes are predicted.
    model = ClsModel(
        torch.tensor([0, 5, 6]), torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([100.0, 0.0, 0.0]), torch.zeros(1, 2)
    )
    assert model.predict(torch.tensor([[[2.0, 1.0], [1.0, 3.0]]])).tolist() == [[5, 6]]
