"""Under `accelerate launch`, processes split the stream and the main one merges their parts in order."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from tests.launchers import cpu_processes
from tests.proctree import run_tree
from tests.serve.helpers import SERVE, read_rows, same_predictions, save_picture, serve, subprocess_env

DEADLINE_S = 180  # ~15 s alone, ~40 s on the loaded 2-core CI box


@pytest.mark.slow
def test_two_cpu_processes_merge_to_the_same_csv_as_one(bundle, tmp_path):
    images = tmp_path / "imgs"
    for i in range(9):
        save_picture(images / f"c{i % 3}" / f"{i}.jpg", seed=i, size=(24, 20))
    (images / "c1" / "broken.jpg").write_bytes(b"junk")
    common = ["--workers", 0, "--batch-size", 2, "--device", "cpu", "--no-progress"]
    two = tmp_path / "two.csv"
    # serve's --device cpu makes the two workers a gloo CPU group (tests/launchers.py)
    done = run_tree(
        cpu_processes(2, SERVE, bundle, images, "--out", two, *common), DEADLINE_S, env=subprocess_env()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "terminate called" not in done.stderr  # a gloo group left alive at exit aborts the process
    assert "done: 9 ok, 1 errors" in done.stdout and "2 process(es)" in done.stdout
    assert not list(tmp_path.glob("two.csv.part*"))
    serve(bundle, images, "--out", tmp_path / "one.csv", *common)
    same_predictions(read_rows(two), read_rows(tmp_path / "one.csv"))


@pytest.fixture
def gloo_group(tmp_path):
    """A one-process gloo group, as a launcher would have set up before main() runs."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_serve_destroys_the_process_group_when_it_refuses_to_run(bundle, tmp_path, gloo_group):
    (tmp_path / "taken.csv").write_text("path\n")
    with pytest.raises(SystemExit):
        serve(bundle, tmp_path, "--out", tmp_path / "taken.csv", "--device", "cpu")
    assert not dist.is_initialized()


def test_serve_destroys_the_process_group_when_it_is_done(bundle, tmp_path, gloo_group):
    save_picture(tmp_path / "imgs" / "a.jpg")
    assert (
        serve(bundle, tmp_path / "imgs", "--out", tmp_path / "p.csv", "--device", "cpu", "--workers", 0) == 0
    )
    assert not dist.is_initialized()
