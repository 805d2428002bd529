"""Two CPU processes under `accelerate launch`: every image is seen exactly once per epoch across ranks.

The data set is our GPU path's byte reader (EncodedImages) over 13 files — odd on purpose, so the last
batch does not divide evenly and Accelerate pads it with repeats that gather_for_metrics must drop.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from tests.launchers import cpu_processes
from tests.proctree import run_tree

REPO = Path(__file__).resolve().parents[2]
N, BATCH, RANKS, EPOCHS = 13, 3, 2, 2
DEADLINE_S = 180  # ~10 s alone, ~45 s on the loaded 2-core CI box

SCRIPT = (
    textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from train.gpu_data import EncodedImages, collate_encoded

    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    samples = [(str(folder / f"{i:03d}.bin"), i % 2) for i in range(__N__)]
    acc = Accelerator(cpu=True)
    loader = acc.prepare(DataLoader(EncodedImages(samples, threads=2, cpu_decode=False), batch_size=__BATCH__, shuffle=True,
                                    collate_fn=collate_encoded))
    report = {"rank": acc.process_index, "world": acc.num_processes, "epochs": []}
    for epoch in range(__EPOCHS__):
        loader.set_epoch(epoch)
        local, gathered, deduped = [], [], []
        for batch in loader:
            # the file's content is its index: proves the bytes travelled with the right key
            assert [int(bytes(d.tolist())) for d in batch.data] == batch.indices.tolist()
            local += batch.indices.tolist()
            gathered += acc.gather(batch.indices).tolist()
            deduped += acc.gather_for_metrics(batch.indices).tolist()
        report["epochs"].append({"local": local, "gathered": gathered, "deduped": deduped})
    (out / f"rank{acc.process_index}.json").write_text(json.dumps(report))
    acc.end_training()  # a gloo group left alive at interpreter exit aborts the process
""")
    .replace("__N__", str(N))
    .replace("__BATCH__", str(BATCH))
    .replace("__EPOCHS__", str(EPOCHS))
)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("sharding")
    folder = tmp / "files"
    folder.mkdir()
    for i in range(N):
        (folder / f"{i:03d}.bin").write_bytes(str(i).encode())
    (tmp / "shard.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "true"}
    # Accelerator(cpu=True) in the script makes the ranks a gloo group on the CPU (tests/launchers.py)
    cmd = cpu_processes(RANKS, tmp / "shard.py", folder, tmp)
    proc = run_tree(cmd, DEADLINE_S, env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(RANKS)]
    assert all(r["world"] == RANKS for r in reports)
    return reports


pytestmark = pytest.mark.slow


def test_gather_for_metrics_sees_every_image_exactly_once_per_epoch(reports):
    for rank in reports:
        for epoch in rank["epochs"]:
            assert sorted(epoch["deduped"]) == list(range(N))


def test_without_dedupe_the_only_extras_are_the_padding_repeats(reports):
    padded = -(-N // (BATCH * RANKS)) * BATCH * RANKS  # every rank runs the same number of full batches
    for epoch in reports[0]["epochs"]:
        extras = Counter(epoch["gathered"]) - Counter(range(N))
        assert len(epoch["gathered"]) == padded
        assert sum(extras.values()) == padded - N
        assert set(extras) <= set(range(N))  # repeats of real images, nothing invented


def test_ranks_read_disjoint_shards_that_cover_the_epoch(reports):
    for e in range(EPOCHS):
        shards = [Counter(r["epochs"][e]["local"]) for r in reports]
        assert set(shards[0]) | set(shards[1]) == set(range(N))
        assert len(shards[0]) == len(shards[1])  # even split: no rank waits on another at the last step
        overlap = sum((shards[0] & shards[1]).values())
        assert overlap <= BATCH * RANKS - N % (BATCH * RANKS)  # only padding can land on both ranks


def test_each_epoch_is_a_new_shuffle_shared_by_all_ranks(reports):
    first, second = (reports[0]["epochs"][e]["gathered"] for e in range(EPOCHS))
    assert first != second
    assert reports[0]["epochs"][0]["gathered"] == reports[1]["epochs"][0]["gathered"]


def _rank_loader(rank: int, n: int, seed: int):
    """Our train loader as one rank of two builds it (a fresh dataset and sampler, as in its own process),
    sharded the way accelerator.prepare shards it."""
    import numpy as np
    import torch
    from accelerate.data_loader import prepare_data_loader

    from train.data import ArraySource, ImageDataset, train_loader

    # image i is filled with the value i: the batch itself says which images it holds
    pixels = np.stack([np.full((4, 4, 3), i, dtype=np.uint8) for i in range(n)])
    ds = ImageDataset(
        ArraySource(pixels, [i % 2 for i in range(n)], "img"),
        lambda im: torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1),
        seed=seed,
    )
    loader = train_loader(ds, batch_size=BATCH, seed=seed, num_workers=0, pin=False)
    return prepare_data_loader(loader, num_processes=RANKS, process_index=rank, put_on_device=False)


def test_our_train_loader_shards_every_image_exactly_once_per_epoch_across_two_ranks():
    n = 12  # a multiple of BATCH * RANKS: no padding repeats, so "exactly once" is exact
    ranks = [_rank_loader(r, n, seed=7) for r in range(RANKS)]
    orders = []
    for epoch in range(EPOCHS):
        seen = []
        for loader in ranks:
            loader.set_epoch(epoch)
            mine = [int(v) for images, _, _ in loader for v in images[:, 0, 0, 0]]
            assert mine  # each rank gets a share
            seen += mine
        assert Counter(seen) == Counter(range(n)), f"epoch {epoch}: {sorted(seen)}"
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled per epoch, identically on every rank
