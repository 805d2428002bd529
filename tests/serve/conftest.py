"""serve fixtures: an untrained tiny bundle with display names, and a small image folder."""

from __future__ import annotations

import pytest

from tests.serve.helpers import image_tree

CLASSES = ["1", "2", "3", "4"]
NAMES = ["circle", "square", "triangle", "cross"]


@pytest.fixture
def bundle(make_bundle):
    """cifar_cnn at 32 px: the cheapest real model; labels 1..4 with display names."""
    return make_bundle("cifar_cnn", crop=32, classes=CLASSES, display_names=NAMES)


@pytest.fixture
def photos(tmp_path):
    """tmp/photos/{1,2}/img_{0,1,2}.jpg: six small JPEGs in two class folders."""
    root = tmp_path / "photos"
    image_tree(root, {"1": 3, "2": 3})
    return root
