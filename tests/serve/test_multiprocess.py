"""Under `accelerate launch`, processes split the stream and the main one merges their parts in order."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.serve.helpers import SERVE, read_rows, same_predictions, save_picture, serve, subprocess_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_merge_to_the_same_csv_as_one(bundle, tmp_path):
    images = tmp_path / "imgs"
    for i in range(9):
        save_picture(images / f"c{i % 3}" / f"{i}.jpg", seed=i, size=(24, 20))
    (images / "c1" / "broken.jpg").write_bytes(b"junk")
    common = ["--workers", 0, "--batch-size", 2, "--device", "cpu", "--no-progress"]
    # `--cpu --num_processes 2` starts ONE process in accelerate 1.x (its simple launcher); --multi_gpu
    # takes the torchrun launcher, and serve's --device cpu makes it a gloo CPU group.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), str(SERVE)]
    two = tmp_path / "two.csv"
    done = subprocess.run([*launch, *map(str, [bundle, images, "--out", two, *common])], env=subprocess_env(),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done: 9 ok, 1 errors" in done.stdout and "2 process(es)" in done.stdout
    assert not list(tmp_path.glob("two.csv.part*"))
    serve(bundle, images, "--out", tmp_path / "one.csv", *common)
    same_predictions(read_rows(two), read_rows(tmp_path / "one.csv"))
