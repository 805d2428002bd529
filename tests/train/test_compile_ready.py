"""What train.compile (and DDP under it) needs from the loop, checked on the CPU: unwrapping keeps the
compiled DDP wrapper whole, bad images are masked instead of dropped, and the last partial batch can go."""

from __future__ import annotations

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from core.config import load_config
from tests.train.helpers import DEMO_RECIPE, TINY
from train.data import IGNORE_LABEL, load_data
from train.engine import bare_model
from train.feed import CpuFeed, GpuFeed
from train.run import make_criterion


def test_unwrapping_a_compiled_ddp_model_keeps_no_sync_on_the_model_the_loop_trains(tmp_path):
    """accelerate's unwrap_model(compiled) rewires compiled._orig_mod in place: the loop's model lost DDP's
    no_sync, so accumulate() all-reduced on every micro-step."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        net = torch.nn.Linear(4, 2)
        compiled = torch.compile(torch.nn.parallel.DistributedDataParallel(net))
        bare = bare_model(Accelerator(cpu=True), compiled)
        assert bare is net
        assert hasattr(compiled, "no_sync")
        assert isinstance(compiled._orig_mod, torch.nn.parallel.DistributedDataParallel)
    finally:
        dist.destroy_process_group()
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def test_a_masked_slot_changes_neither_the_loss_nor_the_gradients_of_the_other_images():
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 3)
    x, y = torch.randn(4, 6), torch.tensor([0, 2, 1, 2])
    criterion = make_criterion(label_smoothing=0.1)
    masked = criterion(
        net(torch.cat([x[:2], torch.zeros(1, 6), x[2:]])), torch.tensor([0, 2, IGNORE_LABEL, 1, 2])
    )
    masked.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    plain = criterion(net(x), y)
    plain.backward()
    assert torch.allclose(masked, plain)
    assert all(torch.allclose(a, p.grad) for a, p in zip(grads, net.parameters()))


def test_drop_last_leaves_only_full_training_batches_on_both_feeds(small_root):
    cfg = load_config(DEMO_RECIPE, [f"data.root={small_root}", *TINY])
    data = load_data(cfg)
    n = len(data.train)
    batch = 5 if n % 5 else 7
    assert n % batch  # a partial last batch exists
    for feed_type in (CpuFeed, GpuFeed):
        train, _ = feed_type(cfg, data, torch.device("cpu")).loaders(batch, batch, pin=False, drop_last=True)
        assert len(train) == n // batch
        sizes = [len(b[1]) if isinstance(b, tuple) else len(b) for b in train]
        assert sizes == [batch] * (n // batch)


def test_the_gpu_path_keeps_every_worker_when_many_files_will_be_decoded_by_pil_in_them(tmp_path):
    from PIL import Image

    from train.feed import GPU_PATH_MAX_WORKERS, gpu_path_workers

    img = Image.new("RGB", (40, 30), (200, 30, 90))
    jpegs, pngs = [], []
    for k in range(10):
        img.save(tmp_path / f"{k}.jpg", quality=90)
        img.save(tmp_path / f"{k}.png")
        jpegs.append((str(tmp_path / f"{k}.jpg"), 0))
        pngs.append((str(tmp_path / f"{k}.png"), 0))
    assert gpu_path_workers(12, jpegs) == GPU_PATH_MAX_WORKERS
    assert gpu_path_workers(12, jpegs + pngs) == 12
    assert gpu_path_workers(2, jpegs) == 2
