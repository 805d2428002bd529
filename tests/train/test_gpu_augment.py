"""The batched device augmentation draws the same random crops, flips and rotations as the CPU path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from core.preprocess import AugmentSpec, EvalSpec, eval_transform, train_transform
from train.gpu_augment import eval_batch, resized_crop_params, train_batch, train_geometry, uniforms


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny ops: intra-op threads only add contention (the test machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


INSIDE = 200  # coordinate images: R = x * step, G = y * step, B = INSIDE marks real pixels (rotation fills 0)


def coordinate_image(side: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    step = 256 // side
    return torch.stack([step * x, step * y, torch.full_like(x, INSIDE)]).to(torch.uint8)


def fitted_geometry(out: torch.Tensor, side: int) -> dict[str, np.ndarray]:
    """Read each output's crop back from the coordinate image: least-squares source = J @ (u, v) + t."""
    c = out.shape[-1]
    step = 256 // side
    v, u = torch.meshgrid(
        torch.arange(c, dtype=torch.float64), torch.arange(c, dtype=torch.float64), indexing="ij"
    )
    design = torch.stack([u.flatten(), v.flatten(), torch.ones(c * c, dtype=torch.float64)], dim=1)
    jac = []
    for img in out.to(torch.float64):
        inside = (img[2] == INSIDE).flatten()
        inside &= (img[0].flatten() > 0) & (img[0].flatten() < 256 - 2 * step)  # ramps saturate at the border
        inside &= (img[1].flatten() > 0) & (img[1].flatten() < 256 - 2 * step)
        a = design[inside]
        coords = torch.stack([img[0].flatten()[inside], img[1].flatten()[inside]], 1) / step
        coef = torch.linalg.lstsq(a, coords).solution
        jac.append(coef[:2].T)  # [[dx/du, dx/dv], [dy/du, dy/dv]]
    j = torch.stack(jac).numpy()
    det = j[:, 0, 0] * j[:, 1, 1] - j[:, 0, 1] * j[:, 1, 0]
    return {
        "area": np.abs(det) * c * c / side**2,  # crop box area / image area (size == crop)
        "log_aspect": np.log(np.hypot(j[:, 0, 0], j[:, 1, 0]) / np.hypot(j[:, 0, 1], j[:, 1, 1])),
        "flipped": det < 0,
        "angle": np.degrees(np.arctan2(-j[:, 0, 1], j[:, 1, 1])),
    }


def both_paths(aug: AugmentSpec, n: int, side: int) -> tuple[dict, dict, AugmentSpec]:
    """n draws of core.preprocess.train_transform (PIL in) and of train_batch, read back as geometry."""
    spec = EvalSpec(resize=18, crop=16)
    img = coordinate_image(side)
    torch.manual_seed(0)
    tf, pil = train_transform(aug, spec), TF.to_pil_image(img)
    cpu = torch.stack([tf(pil) for _ in range(n)])
    dev = train_batch([img] * n, torch.arange(n), seed=0, epoch=0, aug=aug, spec=spec)
    return fitted_geometry(cpu, side), fitted_geometry(dev, side), aug


@pytest.fixture(scope="module")
def crops_and_flips() -> tuple[dict, dict, AugmentSpec]:
    return both_paths(AugmentSpec(hflip=0.3), n=1000, side=128)


@pytest.fixture(scope="module")
def rotations() -> tuple[dict, dict, AugmentSpec]:
    return both_paths(AugmentSpec(rotation=20.0, scale=(0.5, 1.0)), n=300, side=64)


def test_crop_area_distribution_matches_cpu_path(crops_and_flips):
    cpu, dev, _ = crops_and_flips
    assert abs(cpu["area"].mean() - dev["area"].mean()) < 0.035
    for q in (0.1, 0.5, 0.9):
        assert abs(np.quantile(cpu["area"], q) - np.quantile(dev["area"], q)) < 0.05, q


def test_crop_aspect_ratio_is_log_uniform_like_cpu_path(crops_and_flips):
    cpu, dev, _ = crops_and_flips
    assert abs(cpu["log_aspect"].mean() - dev["log_aspect"].mean()) < 0.02
    assert abs(cpu["log_aspect"].std() - dev["log_aspect"].std()) < 0.02
    assert np.abs(dev["log_aspect"]).max() < math.log(4 / 3) + 0.05


def test_flip_rate_matches_probability(crops_and_flips):
    cpu, dev, aug = crops_and_flips
    sigma = math.sqrt(aug.hflip * (1 - aug.hflip) / len(dev["flipped"]))
    assert abs(dev["flipped"].mean() - aug.hflip) < 4 * sigma
    assert abs(cpu["flipped"].mean() - dev["flipped"].mean()) < 6 * sigma


def test_rotation_angles_fill_the_configured_range_like_cpu_path(rotations):
    cpu, dev, aug = rotations
    assert np.abs(dev["angle"]).max() <= aug.rotation + 1.0
    assert (
        np.quantile(dev["angle"], 0.02) < -0.9 * aug.rotation
        and np.quantile(dev["angle"], 0.98) > 0.9 * aug.rotation
    )
    assert abs(dev["angle"].mean()) < 1.0
    assert abs(cpu["angle"].std() - dev["angle"].std()) < 2.0  # uniform on ±20°: std 11.5°


def torchvision_get_params(
    u: torch.Tensor, height: int, width: int, scale, ratio
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop loop, transcribed, drawing from the given uniforms."""
    area = height * width
    for t in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[t].item())
        lr = (math.log(ratio[0]), math.log(ratio[1]))
        aspect = math.exp(lr[0] + (lr[1] - lr[0]) * u[10 + t].item())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return (
                math.floor(u[20].item() * (height - h + 1)),
                math.floor(u[21].item() * (width - w + 1)),
                h,
                w,
            )
    in_ratio = width / height
    w, h = width, height
    if in_ratio < min(ratio):
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        w = round(h * max(ratio))
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(("height", "width"), [(90, 120), (12, 200), (300, 9)])
def test_crop_params_follow_the_ten_try_algorithm_and_fallback(height, width):
    u = uniforms(seed=3, epoch=1, indices=torch.arange(400))
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    got = resized_crop_params(u, torch.full((400,), height), torch.full((400,), width), scale, ratio)
    want = [torchvision_get_params(u[k], height, width, scale, ratio) for k in range(400)]
    assert got.tolist() == [list(w) for w in want]
    if height == 12:  # a strip this thin makes most tries fail: the fallback must have been used
        assert (got[:, 2] == height).sum() > 0


def test_without_rotation_output_equals_cpu_resized_crop_with_the_same_box():
    torch.manual_seed(0)
    img = TF.gaussian_blur(torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8), [5, 5])
    aug, spec = AugmentSpec(hflip=0.5, size=40), EvalSpec(resize=40, crop=36)
    idx = torch.arange(8)
    out = train_batch([img] * 8, idx, seed=0, epoch=0, aug=aug, spec=spec)
    geo = train_geometry(uniforms(0, 0, idx), torch.full((8,), 90), torch.full((8,), 120), aug, 40)
    for k in range(8):
        top, left, h, w = geo.box[k].tolist()
        ref = TF.resized_crop(img, top, left, h, w, [40, 40], antialias=True)
        ref = TF.center_crop(TF.horizontal_flip(ref) if geo.flip[k] else ref, [36, 36])
        assert (out[k].int() - ref.int()).abs().max() <= 1, k
    assert 0 < int(geo.flip.sum()) < 8


def test_rotation_matches_torchvision_rotate_then_resized_crop():
    y, x = torch.meshgrid(torch.arange(90.0), torch.arange(120.0), indexing="ij")
    img = torch.stack([x * 2, y * 2.5, x + y]).clamp(0, 255).to(torch.uint8)
    aug, spec = AugmentSpec(rotation=30.0, hflip=0.5), EvalSpec(resize=64, crop=64)
    idx = torch.arange(6)
    out = train_batch([img] * 6, idx, seed=0, epoch=0, aug=aug, spec=spec)
    geo = train_geometry(uniforms(0, 0, idx), torch.full((6,), 90), torch.full((6,), 120), aug, 64)
    for k in range(6):
        top, left, h, w = geo.box[k].tolist()
        ref = TF.rotate(img, float(geo.angle[k]), interpolation=T.InterpolationMode.BILINEAR)
        ref = TF.resized_crop(ref, top, left, h, w, [64, 64], antialias=True)
        ref = TF.horizontal_flip(ref) if geo.flip[k] else ref
        diff = (out[k].int() - ref.int()).abs()
        # one resampling instead of two: equal inside, differences only along the black corners' edge
        assert diff.float().median() == 0 and (diff > 3).float().mean() < 0.03, k


def test_same_seed_epoch_and_index_give_the_same_augmentation_in_any_batch():
    torch.manual_seed(1)
    images = [torch.randint(0, 256, (3, 40 + 7 * k, 50), dtype=torch.uint8) for k in range(4)]
    aug, spec = AugmentSpec(rotation=10.0, color_jitter=0.3), EvalSpec(resize=24, crop=24)
    together = train_batch(images, torch.tensor([7, 8, 9, 10]), seed=5, epoch=2, aug=aug, spec=spec)
    alone = train_batch(images[2:3], torch.tensor([9]), seed=5, epoch=2, aug=aug, spec=spec)
    reordered = train_batch(images[::-1], torch.tensor([10, 9, 8, 7]), seed=5, epoch=2, aug=aug, spec=spec)
    assert torch.equal(together[2], alone[0])
    assert torch.equal(together, reordered.flip(0))
    next_epoch = train_batch(images, torch.tensor([7, 8, 9, 10]), seed=5, epoch=3, aug=aug, spec=spec)
    other_seed = train_batch(images, torch.tensor([7, 8, 9, 10]), seed=6, epoch=2, aug=aug, spec=spec)
    assert not torch.equal(together, next_epoch) and not torch.equal(together, other_seed)


def test_uniform_draws_are_uniform_and_independent_of_neighbours():
    u = uniforms(seed=0, epoch=0, indices=torch.arange(5000), n=4)
    assert abs(u.mean().item() - 0.5) < 0.01
    assert abs((u < 0.1).double().mean().item() - 0.1) < 0.01
    corr = torch.corrcoef(torch.stack([u[:-1, 0], u[1:, 0], u[:-1, 1]]))
    assert corr[0, 1].abs() < 0.05 and corr[0, 2].abs() < 0.05


def test_color_jitter_moves_brightness_within_the_configured_strength():
    flat = torch.full((3, 30, 30), 100, dtype=torch.uint8)
    aug, spec = AugmentSpec(hflip=0.0, color_jitter=0.4, scale=(1.0, 1.0), ratio=(1.0, 1.0)), EvalSpec(30, 30)
    out = train_batch([flat] * 400, torch.arange(400), seed=0, epoch=0, aug=aug, spec=spec).float()
    means = out.mean(dim=(1, 2, 3))  # flat gray: contrast and saturation are no-ops, brightness scales
    assert means.min() >= 100 * 0.6 - 1 and means.max() <= 100 * 1.4 + 1
    assert means.std() > 10


def test_augmentation_disabled_trains_on_the_eval_transform():
    img = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    spec = EvalSpec(resize=40, crop=32)
    out = train_batch([img], torch.tensor([0]), 0, 0, AugmentSpec(enabled=False), spec)
    assert torch.equal(out, eval_batch([img], spec))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_eval_batch_equals_core_eval_transform_on_decoded_jpegs(tmp_path, interpolation):
    from core.jpeg import decode_files

    rng = np.random.default_rng(0)
    blobs, pils = [], []
    for k, (w, h) in enumerate([(97, 61), (64, 128), (300, 200), (40, 40)]):
        arr = rng.normal(128, 50, (h, w, 3)).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{k}.jpg", quality=85)
        blobs.append(torch.frombuffer(bytearray((tmp_path / f"{k}.jpg").read_bytes()), dtype=torch.uint8))
        pils.append(Image.open(tmp_path / f"{k}.jpg").convert("RGB"))
    spec = EvalSpec(resize=73, crop=64, interpolation=interpolation)
    decoded, errors = decode_files(blobs, "cpu")
    assert errors == {}
    got = eval_batch(decoded, spec)
    want = torch.stack([eval_transform(spec)(p) for p in pils])
    diff = (got.int() - want.int()).abs()
    assert diff.max() <= 1 and diff.float().mean() < 0.3


@pytest.mark.gpu
@pytest.mark.parametrize("rotation", [0.0, 30.0])
def test_cuda_gives_the_same_batch_as_cpu_within_float_rounding(rotation):
    torch.manual_seed(0)
    images = [
        TF.gaussian_blur(torch.randint(0, 256, (3, 60 + 13 * k, 90), dtype=torch.uint8), [5, 5])
        for k in range(5)
    ]
    aug, spec = AugmentSpec(rotation=rotation, color_jitter=0.2), EvalSpec(resize=40, crop=32)
    idx = torch.arange(5)
    on_cpu = train_batch(images, idx, seed=1, epoch=0, aug=aug, spec=spec)
    on_gpu = train_batch([im.cuda() for im in images], idx, seed=1, epoch=0, aug=aug, spec=spec)
    assert on_gpu.is_cuda
    diff = (on_gpu.cpu().int() - on_cpu.int()).abs()
    assert diff.float().mean() < 0.05 and diff.max() <= 2
    assert (
        eval_batch([im.cuda() for im in images], spec).cpu().int() - eval_batch(images, spec).int()
    ).abs().max() <= 1
