"""data.decode: gpu in the training loop, on the CPU device (same code as on CUDA): exact validation counts,
bad files, the preview, CIFAR-10's refusal, and Accelerate's end-of-dataloader state under prefetch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader

from core.bundle import load_bundle, read_record
from core.config import load_config
from core.demo_data import make_demo_dataset
from core.errors import UserError
from core.images import is_image_file
from core.preprocess import EvalSpec, WithPreprocessing
from tests.train.helpers import CONFIGS, DEMO_RECIPE, TINY, train_past_a_broken_image
from train.data import EpochSampler, load_data
from train.feed import GpuFeed, decode_mode
from train.gpu_data import EncodedImages, GpuPipeline, collate_encoded, engine_batches

GPU = "data.decode=gpu"


def _odd_root(tmp_path):
    """3 classes × (train 4, valid 5): 15 validation images, so no batch size of 2 or 4 divides them."""
    return make_demo_dataset(tmp_path / "data", num_classes=3, per_split={"train": 4, "valid": 5}, size=36)


def _plain_valid_eval(bundle_dir, valid_dir):
    """The bundle on every validation image at once through the device pipeline's own eval preprocessing:
    no loader, no prefetch, no gather. (n, correct, mean loss)."""
    model, record = load_bundle(bundle_dir)
    net = WithPreprocessing(model, record.preprocess).eval()
    samples = [
        (p, y)
        for y, c in enumerate(record.classes)
        for p in sorted((valid_dir / c).iterdir())
        if is_image_file(p)
    ]
    raw = collate_encoded(EncodedImages(samples, threads=2).__getitems__(list(range(len(samples)))))
    images, errors = GpuPipeline(record.preprocess, "cpu").images_uint8(raw, 0)
    assert not errors
    with torch.no_grad():
        logits = net(images)
    return (
        len(samples),
        (logits.argmax(1) == raw.labels).sum().item(),
        F.cross_entropy(logits, raw.labels).item(),
    )


# ---------------------------------------------------------------------------------------- whole runs


def test_gpu_decode_run_counts_every_validation_image_once_and_scores_like_a_plain_evaluation(
    tmp_path, train_inproc
):
    root = _odd_root(tmp_path)
    result = train_inproc(
        f"data.root={root}",
        GPU,
        "model.arch=cifar_cnn",
        "train.epochs=2",
        "train.batch_size=5",
        "train.eval_batch_size=4",
        "run.name=gpu",
    )
    assert result.exit_code == 0 and result.state.finished
    best = result.run_dir / "best"
    metrics = read_record(best).metrics
    n, correct, loss = _plain_valid_eval(best, root / "valid")
    assert n == 15
    assert metrics["valid_n"] == n  # a batch trimmed by a stale end-of-dataloader flag would give 14
    assert metrics["valid_acc"] == correct / n
    assert metrics["valid_loss"] == pytest.approx(loss, abs=1e-5)
    assert (result.run_dir / "train_batch.png").is_file()


def test_gpu_decode_skips_an_unreadable_training_image_and_lists_it(tmp_path, train_inproc, small_root):
    _, _, listed = train_past_a_broken_image(train_inproc, small_root, tmp_path, GPU, "train.epochs=1")
    assert listed[0].split("\t")[1]  # with its reason


def test_gpu_decode_with_cifar10_is_refused_before_anything_is_loaded(tmp_path, train_inproc):
    with pytest.raises(UserError, match=r"data\.decode: gpu .*data\.source: cifar10.*data\.decode: cpu"):
        train_inproc(
            GPU,
            f"data.root={tmp_path / 'nowhere'}",
            "data.download=false",
            config=CONFIGS / "cifar10_cnn.yaml",
            tiny=False,
        )
    assert not (tmp_path / "runs").exists()


def test_decode_auto_keeps_cifar10_on_the_cpu_path_even_on_cuda():
    cfg = load_config(CONFIGS / "cifar10_cnn.yaml", ["data.decode=auto"])
    assert decode_mode(cfg, torch.device("cuda")) == "cpu"
    folder = load_config(DEMO_RECIPE, ["data.decode=auto"])
    assert decode_mode(folder, torch.device("cuda")) == "gpu"
    assert decode_mode(folder, torch.device("cpu")) == "cpu"


def test_gpu_decode_on_a_cpu_machine_runs_with_one_warning_line(tmp_path, train_inproc, small_root, capsys):
    train_inproc(f"data.root={small_root}", GPU, "train.epochs=1", "model.arch=cifar_cnn", "run.name=warn")
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("warning: data.decode: gpu")]) == 1
    assert "data.decode gpu" in out  # the run header names the path taken
    # the demo's PNGs were decoded by PIL in the workers: counted, and said once per run
    assert out.count("image decode:") == 1 and "on the CPU (not a JPEG: " in out


# ---------------------------------------------------------------------------------------- pieces


def test_the_preview_shows_the_first_epoch_0_images_exactly_as_the_gpu_path_augments_them(small_root):
    cfg = load_config(DEMO_RECIPE, [f"data.root={small_root}", *TINY, GPU])
    feed = GpuFeed(cfg, load_data(cfg), torch.device("cpu"))
    images, labels = feed.preview(5)
    keys = list(EpochSampler(len(feed.train_samples), cfg.run.seed))[:5]
    raw = collate_encoded(EncodedImages(feed.train_samples).__getitems__(keys))
    assert torch.equal(images, feed.train_pipe(raw).images)
    assert labels == raw.labels.tolist()


@pytest.fixture
def accelerator():
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_each_prefetched_batch_carries_its_own_end_of_dataloader_state(accelerator, small_root):
    """gather_for_metrics trims to the remainder when the loader says it is at its end; read ahead, the
    flag used to flip while earlier batches were still being evaluated."""
    samples = [(str(p), 0) for p in sorted((small_root / "valid").rglob("*")) if is_image_file(p)][:7]
    loader = accelerator.prepare(
        DataLoader(EncodedImages(samples, threads=2), batch_size=2, collate_fn=collate_encoded)
    )
    flags, gathered = [], 0
    batches = engine_batches(loader, GpuPipeline(EvalSpec(36, 32), "cpu"), str, ignore_label=-1, depth=3)
    for _images, labels, _notes in batches:
        flags.append(accelerator.gradient_state.end_of_dataloader)
        gathered += len(accelerator.gather_for_metrics(labels))
    assert flags == [False, False, False, True]
    assert gathered == 7
    assert accelerator.gradient_state.active_dataloader is None  # the loader finished its epoch and left


# ---------------------------------------------------------------------------------------- on CUDA


@pytest.mark.gpu
def test_a_cuda_run_with_bf16_channels_last_and_the_gpu_feed_writes_a_bundle_that_reloads(
    tmp_path, small_root, monkeypatch, capsys
):
    """The CUDA training loop end to end through Accelerate (the CPU tests force ACCELERATE_USE_CPU)."""
    from train.cli import TrainJob
    from train.run import train

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    cfg = load_config(
        DEMO_RECIPE,
        [
            f"run.output_dir={tmp_path / 'runs'}",
            f"data.root={small_root}",
            *TINY,
            GPU,
            "train.epochs=2",
            "train.mixed_precision=bf16",
            "train.channels_last=true",
            "run.name=cuda",
        ],
    )
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        result = train(TrainJob(cfg, "demo"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    out = capsys.readouterr().out
    assert result.exit_code == 0 and result.state.finished
    assert "process(es) on cuda, mixed precision bf16, data.decode gpu" in out
    assert torch.backends.cudnn.benchmark
    assert next(result.model.parameters()).is_cuda
    # the demo's PNGs go to the CPU decoder, counted and reported once; no JPEG was refused by nvJPEG
    assert out.count("image decode:") == 1 and "refused" not in out and "progressive" not in out
    model, record = load_bundle(result.run_dir / "best")
    net = WithPreprocessing(model, record.preprocess).eval()
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # true fp32 convolutions: TF32 alone moves logits ~1e-2
    try:
        with torch.no_grad():
            reloaded, again = net(x), net.cuda()(x.cuda()).cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert reloaded.shape == (4, len(record.classes)) and torch.isfinite(reloaded).all()
    assert torch.allclose(reloaded, again, atol=1e-2, rtol=1e-2)  # either device
    assert read_record(result.run_dir / "best").metrics["valid_n"] == 12
