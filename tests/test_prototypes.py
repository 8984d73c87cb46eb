"""Eq. 17-19 on hand-made tensors, the prototypes file, the k-means baseline's classifier."""

import numpy as np
import pytest
import torch

from protosaga_core.io.scene_dir import SceneDirError
from protosaga_core.method.baselines import ClsModel, kmeans, kmeans_prototypes
from protosaga_core.method.prototypes import Prototypes, classify, ensemble_prototypes, gaussian_labels, view_prototypes
from protosaga_core.palette import instance_color
from protosaga_core.stages import view_batches


def test_view_prototypes_are_masked_means_without_id_zero():
    features = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)  # pixel i has (2i, 2i+1)
    mask = torch.tensor([[0, 7, 7], [3, 0, 7]])
    ids, vectors, counts = view_prototypes(features, mask)
    assert ids.tolist() == [3, 7]
    assert counts.tolist() == [1, 3]
    torch.testing.assert_close(vectors[0], torch.tensor([6.0, 7.0]))  # pixel 3 only
    torch.testing.assert_close(vectors[1], torch.tensor([(2 + 4 + 10) / 3, (3 + 5 + 11) / 3]))  # pixels 1, 2, 5


def test_view_prototypes_of_an_empty_mask_and_shape_errors():
    ids, vectors, counts = view_prototypes(torch.ones(2, 2, 4), torch.zeros(2, 2, dtype=torch.int64))
    assert ids.shape == (0,) and vectors.shape == (0, 4) and counts.shape == (0,)
    with pytest.raises(ValueError, match="mask"):
        view_prototypes(torch.ones(2, 2, 4), torch.zeros(3, 2, dtype=torch.int64))


def test_ensemble_averages_only_over_the_views_containing_each_instance():
    a = (torch.tensor([1, 2]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    b = (torch.tensor([2, 5]), torch.tensor([[0.0, 4.0], [3.0, 3.0]]))
    empty = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, 2))
    prototypes = ensemble_prototypes([a[0], empty[0], b[0]], [a[1], empty[1], b[1]])
    assert prototypes.ids.tolist() == [1, 2, 5]
    assert prototypes.num_views.tolist() == [1, 2, 1]
    torch.testing.assert_close(prototypes.vectors, torch.tensor([[1.0, 0.0], [0.0, 3.0], [3.0, 3.0]]))


def test_classify_is_a_cosine_argmax_not_a_dot_product():
    prototypes = Prototypes(torch.tensor([4, 9]), torch.tensor([[10.0, 0.0], [1.0, 1.0]]), torch.tensor([1, 1]))
    features = torch.tensor([[[1.0, 0.9], [1.0, 0.0]], [[-1.0, -1.0], [0.0, 0.0]]])  # [2, 2, 2]
    # (1, 0.9) has the larger dot product with (10, 0) but the larger cosine with (1, 1).
    labels = classify(features, prototypes, temperature=10.0)
    assert labels.shape == (2, 2)
    assert labels[0].tolist() == [9, 4]
    assert (labels != 0).all()  # even a zero feature or one opposite to every prototype gets an instance
    assert torch.equal(classify(features, prototypes, temperature=0.5), labels)  # τ > 0 never changes the argmax
    with pytest.raises(ValueError, match="temperature"):
        classify(features, prototypes, temperature=0.0)
    with pytest.raises(ValueError, match="channels"):
        classify(torch.ones(3, 5), prototypes)


def test_without_prototypes_everything_is_zero():
    none = Prototypes(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))
    assert classify(torch.randn(4, 5, 3), none).eq(0).all()


def test_gaussian_labels_use_the_same_argmax_on_each_f_i():
    generator = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 3, (500,), generator=generator)
    features = torch.nn.functional.one_hot(truth, 16).float() * 2 + 0.1 * torch.randn(500, 16, generator=generator)
    prototypes = Prototypes(torch.tensor([11, 12, 13]), torch.eye(16)[:3], torch.ones(3, dtype=torch.int64))
    labels = gaussian_labels(features, prototypes)
    assert torch.equal(labels, truth + 11)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        gaussian_labels(features[None], prototypes)


def test_prototypes_file_round_trip(tmp_path):
    prototypes = Prototypes(torch.tensor([2, 7, 300]), torch.randn(3, 16), torch.tensor([4, 1, 2]))
    path = tmp_path / "prototypes.npz"
    prototypes.save(path)
    loaded = Prototypes.load(path)
    assert torch.equal(loaded.ids, prototypes.ids) and torch.equal(loaded.num_views, prototypes.num_views)
    torch.testing.assert_close(loaded.vectors, prototypes.vectors)
    assert loaded.ids.dtype == torch.int64 and loaded.vectors.dtype == torch.float32
    assert [p.name for p in tmp_path.iterdir()] == ["prototypes.npz"]  # no temporary file left


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"ids": np.array([1, 2]), "vectors": np.zeros((2, 4))}, "missing arrays"),
        ({"ids": np.array([1, 2]), "vectors": np.zeros((3, 4)), "num_views": np.array([1, 1])}, "expected ids"),
        ({"ids": np.array([0, 2]), "vectors": np.zeros((2, 4)), "num_views": np.array([1, 1])}, "positive"),
        ({"ids": np.array([2, 2]), "vectors": np.zeros((2, 4)), "num_views": np.array([1, 1])}, "unique"),
        ({"ids": np.array([1.0, 2.0]), "vectors": np.zeros((2, 4)), "num_views": np.array([1, 1])}, "integers"),
        ({"ids": np.array([1, 2]), "vectors": np.full((2, 4), np.nan), "num_views": np.array([1, 1])}, "finite"),
    ],
)
def test_loading_a_malformed_prototypes_file_names_it(tmp_path, arrays, message):
    path = tmp_path / "prototypes.npz"
    np.savez(path, **arrays)
    with pytest.raises(SceneDirError, match=message) as error:
        Prototypes.load(path)
    assert str(path) in str(error.value)


def test_loading_a_missing_or_foreign_file_names_it(tmp_path):
    with pytest.raises(SceneDirError, match="missing"):
        Prototypes.load(tmp_path / "prototypes.npz")
    foreign = tmp_path / "foreign.npz"
    foreign.write_text("not a zip")
    with pytest.raises(SceneDirError, match=str(foreign)):
        Prototypes.load(foreign)


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


def test_instance_colours_are_distinct_and_deterministic():
    colours = [instance_color(i) for i in range(1, 2001)]
    assert len(set(colours)) == len(colours)
    assert instance_color(17) == instance_color(17)
    assert all(0 <= c <= 255 for colour in colours for c in colour)


def test_view_batches_group_consecutive_views_of_one_size():
    class V:
        def __init__(self, name, width):
            self.name, self.width, self.height = name, width, 10

    views = [V("a", 8), V("b", 8), V("c", 8), V("d", 6), V("e", 8)]
    assert [[v.name for v in b] for b in view_batches(views, 2)] == [["a", "b"], ["c"], ["d"], ["e"]]
