"""Eq. 17-19 on hand-made tensors and the prototypes file."""

import numpy as np
import pytest
import torch

from protosaga_core.io.scene_dir import SceneDirError
from protosaga_core.method.prototypes import Prototypes, classify, ensemble_prototypes, gaussian_labels, view_prototypes


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


def test_only_keeps_the_prototypes_of_the_given_ids():
    prototypes = Prototypes(torch.tensor([4, 9, 4, 2]), torch.eye(4), torch.tensor([1, 2, 3, 4]))
    kept = prototypes.only({4, 7})
    assert kept.ids.tolist() == [4, 4] and kept.num_views.tolist() == [1, 3]
    assert torch.equal(kept.vectors, torch.eye(4)[[0, 2]])
    assert len(prototypes.only(set())) == 0
    # Eq. 19 over what is kept never answers another id.
    assert set(classify(torch.eye(4), kept).tolist()) == {4}
