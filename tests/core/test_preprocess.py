"""Preprocessing: uint8 in, the tutorials' normalization out, identical wherever it runs."""

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from core.preprocess import (
    AugmentSpec,
    EvalSpec,
    Normalize,
    WithPreprocessing,
    eval_transform,
    train_transform,
)


def test_eval_transform_gives_uint8_center_crop_of_resized_image():
    img = Image.new("RGB", (300, 200), (10, 20, 30))
    out = eval_transform(EvalSpec(resize=100, crop=64))(img)
    assert out.dtype == torch.uint8 and out.shape == (3, 64, 64)
    assert out[:, 32, 32].tolist() == [10, 20, 30]


def test_eval_transform_resizes_shorter_side_then_crops_never_squashes():
    # Four 50 px vertical bands; a squash to crop×crop would keep all four (red at the left edge),
    # resize-shorter-side + center crop keeps only the middle two (green | blue).
    bands = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    img = Image.new("RGB", (200, 100))
    for i, colour in enumerate(bands):
        img.paste(colour, (50 * i, 0, 50 * (i + 1), 100))
    out = eval_transform(EvalSpec(resize=50, crop=50, interpolation="bilinear"))(img)
    by_hand = img.resize((100, 50), Image.BILINEAR).crop((25, 0, 75, 50))
    want = torch.from_numpy(np.asarray(by_hand).copy()).permute(2, 0, 1)
    assert out.shape == want.shape == (3, 50, 50)
    assert (out.int() - want.int()).abs().max() <= 1
    assert out[:, 25, 5].tolist() == [0, 255, 0] and out[:, 25, 45].tolist() == [0, 0, 255]


def test_normalize_on_uint8_equals_tutorial_totensor_then_normalize():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = T.Normalize(mean, std)(x.float() / 255)
    assert torch.allclose(Normalize(mean, std)(x), ref, atol=1e-5)


def test_with_preprocessing_runs_the_model_on_normalized_input():
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x.mean(dim=(2, 3))

    m = WithPreprocessing(Probe(), EvalSpec(mean=(0.5,) * 3, std=(0.5,) * 3))
    m(torch.full((1, 3, 4, 4), 255, dtype=torch.uint8))
    assert torch.allclose(seen["x"], torch.ones(1, 3, 4, 4))


def test_train_transform_yields_crop_sized_uint8_including_larger_rrc_then_center_crop():
    img = Image.new("RGB", (120, 90), (200, 0, 0))
    spec = EvalSpec(resize=73, crop=64)
    for aug in (AugmentSpec(rotation=30), AugmentSpec(size=80, scale=(0.8, 1.0)), AugmentSpec(enabled=False)):
        out = train_transform(aug, spec)(img)
        assert out.dtype == torch.uint8 and out.shape == (3, 64, 64)
