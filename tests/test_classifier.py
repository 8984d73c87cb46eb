"""The τ·cos rule (Eq. 2-3, 14, 19) that training, association and inference share.

Every expectation here comes from geometry worked out by hand, never from the code's own expression:
vectors at known angles have known cosines (parallel 1, perpendicular 0, opposite -1, 60° 1/2), so their
logits are τ times those numbers; a cosine ignores lengths; and Eq. 19's answer is the prototype at the
smallest angle, which the tests read off angles they chose.
"""

import math

import pytest
import torch

from protosaga_core.method.classifier import cosine_logits
from protosaga_core.method.prototypes import CLASSIFY_CHUNK, Prototypes, classify


def unit_at(degrees: float) -> list[float]:
    """The 2-D unit vector at `degrees` from +x."""
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def prototypes_of(ids: list[int], vectors: torch.Tensor) -> Prototypes:
    return Prototypes(torch.tensor(ids), vectors, torch.ones(len(ids), dtype=torch.int64))


def test_logits_of_vectors_at_known_angles_are_temperature_times_their_cosines():
    # The feature +x against: +x (0°), +y (90°), -x (180°), 60° and 120° directions.
    feature = torch.tensor([[1.0, 0.0]])
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], unit_at(60), unit_at(120)])
    expected_cosines = torch.tensor([[1.0, 0.0, -1.0, 0.5, -0.5]])
    for temperature in (1.0, 10.0, 0.25):
        torch.testing.assert_close(cosine_logits(feature, vectors, temperature), temperature * expected_cosines)


def test_logits_ignore_the_lengths_of_features_and_vectors():
    """A cosine is the angle alone: any positive scale of either side, each row its own, changes nothing,
    and the logits stay within [-τ, τ] however long the vectors are."""
    features = torch.tensor([[3.0, 0.0], [0.0, -0.01], [2.0, 2.0]])
    vectors = torch.tensor([[5.0, 0.0], [0.0, 0.2], [-40.0, 40.0]])
    # Hand-worked: rows are the features +x, -y, 45°; columns the vectors +x, +y, 135°.
    s = math.sqrt(0.5)
    expected = 4.0 * torch.tensor([[1.0, 0.0, -s], [0.0, -1.0, -s], [s, s, 0.0]])
    torch.testing.assert_close(cosine_logits(features, vectors, 4.0), expected)
    row_scales, vector_scales = torch.tensor([[100.0], [0.5], [7.0]]), torch.tensor([[1e-3], [30.0], [1.0]])
    torch.testing.assert_close(cosine_logits(row_scales * features, vector_scales * vectors, 4.0), expected)


def test_a_zero_feature_scores_zero_against_every_vector():
    """As documented: a pixel no Gaussian reaches renders a zero feature, whose cosine is 0 (not NaN)."""
    logits = cosine_logits(torch.zeros(2, 3), torch.tensor([[1.0, 0.0, 0.0], [0.0, -2.0, 1.0]]), 10.0)
    assert torch.equal(logits, torch.zeros(2, 2))


def test_logits_keep_the_leading_shape_the_features_dtype_and_device():
    vectors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    features = torch.zeros(2, 5, 7, 3, dtype=torch.float64)
    features[..., 2] = 1.0  # every feature is +z: cosines 0, 0, 1, 0
    logits = cosine_logits(features, vectors, 3.0)
    assert logits.shape == (2, 5, 7, 4) and logits.dtype == torch.float64 and logits.device == features.device
    assert torch.equal(logits, torch.tensor([0.0, 0.0, 3.0, 0.0], dtype=torch.float64).expand(2, 5, 7, 4))
    # On another device the result stays there (the meta device computes shapes without a GPU).
    on_meta = cosine_logits(features.to("meta"), vectors.to("meta"), 3.0)
    assert on_meta.device.type == "meta" and on_meta.shape == (2, 5, 7, 4)


def test_eq_19_answers_the_id_of_the_prototype_at_the_smallest_angle():
    """Three prototypes 120° apart, of very different lengths and with ids out of order: each feature takes
    the id of the prototype nearest it in angle, which a longer prototype does not win by length (as a
    plain dot product would let it)."""
    prototype_angles, ids = [0.0, 120.0, 240.0], [9, 2, 14]
    lengths = torch.tensor([[0.01], [50.0], [1.0]])
    prototypes = prototypes_of(ids, lengths * torch.tensor([unit_at(a) for a in prototype_angles]))
    feature_angles = [10.0, 55.0, 65.0, 130.0, 185.0, 200.0, 290.0, 350.0]
    features = torch.tensor([unit_at(a) for a in feature_angles]) * torch.linspace(0.1, 9.0, len(feature_angles))[:, None]

    def nearest_id(angle: float) -> int:
        gaps = [abs((angle - p + 180.0) % 360.0 - 180.0) for p in prototype_angles]
        return ids[gaps.index(min(gaps))]

    assert classify(features, prototypes).tolist() == [nearest_id(a) for a in feature_angles] == [9, 9, 2, 2, 14, 14, 14, 9]
    # The temperature sharpens the scores but never changes the argmax.
    assert classify(features, prototypes, temperature=0.01).tolist() == classify(features, prototypes).tolist()


def test_eq_19_keeps_the_leading_shape_and_reads_every_chunk():
    """Label maps [H, W] come back [H, W]; a map longer than one classification chunk is labelled past the
    first chunk too (the last pixel is a different instance from the rest)."""
    prototypes = prototypes_of([4, 6], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    features = torch.tensor([1.0, 0.1]).repeat(CLASSIFY_CHUNK + 5, 1)
    features[-1] = torch.tensor([0.1, 1.0])
    labels = classify(features.reshape(1, CLASSIFY_CHUNK + 5, 2), prototypes)
    assert labels.shape == (1, CLASSIFY_CHUNK + 5) and labels.dtype == torch.int64
    assert labels[0, :-1].eq(4).all() and labels[0, -1] == 6


def test_eq_19_edge_cases_as_documented():
    prototypes = prototypes_of([5, 3], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    # A zero feature ties every prototype at cosine 0: the tie goes to the first prototype.
    assert classify(torch.zeros(3, 2), prototypes).tolist() == [5, 5, 5]
    # No prototypes at all: every pixel is 0, in the features' leading shape.
    none = prototypes_of([], torch.zeros(0, 2))
    assert torch.equal(classify(torch.ones(2, 4, 2), none), torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="temperature"):
        classify(torch.ones(1, 2), prototypes, temperature=-1.0)  # a negative τ would pick the least aligned
    with pytest.raises(ValueError, match="channels"):
        classify(torch.ones(1, 3), prototypes)
