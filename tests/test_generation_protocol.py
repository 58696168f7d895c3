"""The generation benchmark's pieces: Fashion-MNIST splits and forms, the Fréchet distance."""

import hashlib

import numpy as np
import pytest
import torch

from generators.quality import protocol
from zoo import data


def test_fashion_mnist_splits_are_the_official_files_split_disjointly():
    splits = {s: data.fashion_mnist(s) for s in data.SPLITS}
    assert [len(splits[s][0]) for s in data.SPLITS] == [55000, 5000, 10000]
    for images, labels in splits.values():
        assert images.shape[1:] == (1, 28, 28) and images.dtype == torch.float32
        assert 0 <= float(images.min()) and float(images.max()) == 1.0 and set(labels.tolist()) == set(range(10))
    assert torch.bincount(splits["test"][1]).tolist() == [1000] * 10  # the official test file is balanced
    keys = {s: {hashlib.sha1(x.numpy().tobytes()).digest() for x in splits[s][0]} for s in data.SPLITS}
    assert all(len(keys[s]) == len(splits[s][0]) for s in data.SPLITS)
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not keys[a] & keys[b], (a, b)
    with pytest.raises(ValueError, match="split must be one of"):
        data.fashion_mnist("heldout")


def test_the_zoo_image_form_round_trips():
    images, _ = data.fashion_mnist("validation")
    rgb = data.fashion_mnist_rgb32(images[:8])
    assert rgb.shape == (8, 3, 32, 32) and float(rgb[..., :2, :].abs().max()) == 0  # black border
    assert torch.allclose(data.fashion_mnist_gray28(rgb), images[:8], atol=1e-6)
    # another size is brought to 32 x 32 first
    big = torch.nn.functional.interpolate(rgb, size=(64, 64), mode="nearest")
    assert torch.allclose(data.fashion_mnist_gray28(big), images[:8], atol=1e-6)


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20000, 4))
    assert abs(protocol.frechet_distance(a, a)) < 1e-9
    shift = np.array([1.0, -2.0, 0.0, 0.5])
    assert abs(protocol.frechet_distance(a, a + shift) - (shift ** 2).sum()) < 1e-9  # covariances equal
    # N(0, I) vs N(0, 4 I) in 4 dimensions: tr(I + 4 I - 2 * 2 I) = 4
    b = rng.standard_normal((20000, 4)) * 2
    assert abs(protocol.frechet_distance(a, b) - 4.0) < 0.15
