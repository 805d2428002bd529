"""M2 on the device-decode route: bytes parked for the batched GPU decode wait for their batch, so they
cannot make a reader wait (that could deadlock); instead they are bounded themselves, and a file that
would take the parked bytes past --max-inflight-mb is decoded on the CPU. Run on the CPU, with the device
decoder's bookkeeping (device="cpu", gpu_decode=True)."""

from __future__ import annotations

from core.jpeg import BUDGET_FULL
from core.preprocess import EvalSpec
from serve.budget import ByteBudget
from serve.decode import DecodePipeline
from serve.discover import Item
from tests.serve.helpers import jpeg_bytes, picture

SPEC = EvalSpec(resize=37, crop=32)


def test_m2_parking_stays_within_the_limit_but_one_file_always_parks():
    budget = ByteBudget(100)
    assert budget.try_park(150)  # nothing parked: a file larger than the limit still goes alone
    assert not budget.try_park(1)
    budget.release(150, parked=True)
    assert budget.try_park(60) and budget.try_park(40) and not budget.try_park(1)
    assert budget.parked == 100


def test_m2_device_route_parks_at_most_the_budget_and_decodes_the_rest_on_the_cpu(tmp_path):
    files = [tmp_path / f"{i}.jpg" for i in range(8)]
    for i, f in enumerate(files):
        f.write_bytes(jpeg_bytes(picture(seed=i, size=(64, 48)), quality=95))
    size = max(f.stat().st_size for f in files)
    limit = int(2.5 * size)
    items = [Item(str(f), f.name) for f in files]
    with (
        DecodePipeline(SPEC, device="cpu", gpu_decode=True, max_inflight_bytes=limit) as device,
        DecodePipeline(SPEC) as cpu,
    ):
        (b,) = list(device.batches(items, 8))
        (a,) = list(cpu.batches(items, 8))
        assert device.budget.used == 0 and device.budget.parked == 0
        assert device.budget.peak <= 2 * limit + size
    assert device.stats.device == 2 and device.stats.cpu[BUDGET_FULL] == 6
    assert b.errors == a.errors == [""] * 8
    assert (a.images.float() - b.images.float()).abs().mean() < 1.0
