"""The τ·cos rule (Eq. 2-3, 14, 19) that training, association and inference share."""

import torch

from protosaga_core.method.classifier import cosine_logits
from protosaga_core.method.prototypes import Prototypes, classify


def test_logits_are_temperature_times_the_cosine():
    generator = torch.Generator().manual_seed(0)
    features, vectors = torch.randn(2, 5, 8, generator=generator), torch.randn(3, 8, generator=generator)
    logits = cosine_logits(features, vectors, 10.0)
    assert logits.shape == (2, 5, 3)
    expected = 10.0 * torch.nn.functional.cosine_similarity(features[..., None, :], vectors, dim=-1)
    torch.testing.assert_close(logits, expected)


def test_logits_ignore_lengths_and_a_zero_feature_scores_zero():
    features = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    vectors = torch.tensor([[1.0, 0.0], [0.0, 0.5], [-2.0, 0.0]])
    logits = cosine_logits(features, vectors, 2.0)
    torch.testing.assert_close(logits, torch.tensor([[2.0, 0.0, -2.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(cosine_logits(7.0 * features, 0.1 * vectors, 2.0), logits)


def test_logits_follow_the_features_dtype():
    vectors = torch.randn(4, 3)
    assert cosine_logits(torch.randn(2, 3, dtype=torch.float64), vectors, 1.0).dtype == torch.float64


def test_prototype_inference_is_the_argmax_of_the_same_logits():
    generator = torch.Generator().manual_seed(1)
    features, vectors = torch.randn(6, 7, 4, generator=generator), torch.randn(5, 4, generator=generator)
    ids = torch.tensor([9, 2, 14, 3, 8])
    labels = classify(features, Prototypes(ids, vectors, torch.ones(5, dtype=torch.int64)), temperature=10.0)
    assert torch.equal(labels, ids[cosine_logits(features, vectors, 10.0).argmax(-1)])
