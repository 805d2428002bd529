"""A run stopped by a real SIGTERM mid-epoch resumes to exactly the weights of an uninterrupted run."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file

from tests.train.helpers import DEMO_RECIPE, MAIN, TINY, subprocess_env

# 24 training images in batches of 3: 8 steps an epoch; dropout and augmentation make every RNG draw count.
SETUP = ["train.epochs=2", "train.batch_size=3", "model.head.hidden=[16]", "model.head.dropout=0.3",
         "train.scheduler.name=cosine"]


def _start_and_terminate(tmp_path, root, extra=()):
    """Launch a run; send SIGTERM once its progress bar shows epoch 2 under way; return (code, stdout, stderr)."""
    cmd = [sys.executable, str(MAIN), "--config", str(DEMO_RECIPE), f"data.root={root}", "run.name=cut",
           f"run.output_dir={tmp_path / 'runs'}", *TINY, *SETUP, *extra]
    env = {**subprocess_env(tmp_path), "TQDM_MININTERVAL": "0"}  # redraw the bar on every step
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    err, sent = b"", False
    while chunk := os.read(proc.stderr.fileno(), 4096):
        err += chunk
        if not sent and re.search(rb"epoch 2/2:[^\r]*\| *[2-7]/8", err):
            proc.send_signal(signal.SIGTERM)
            sent = True
    proc.wait(timeout=300)
    reader.join(timeout=10)
    return proc.returncode, b"".join(out).decode(), err.decode(errors="replace")


def _weights(run_dir):
    return load_file(str(run_dir / "last" / "model.safetensors"))


@pytest.mark.slow
def test_resume_after_sigterm_mid_epoch_matches_an_uninterrupted_run(tmp_path, small_root, train_inproc):
    code, out, err = _start_and_terminate(tmp_path, small_root)
    assert code == 143, err[-2000:]
    state = json.loads((tmp_path / "runs" / "cut" / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 1 and 0 < state["step"] < 8, "the stop must land inside epoch 2"
    assert "stop requested" in out

    resumed = train_inproc(f"data.root={small_root}", "run.name=cut", "train.resume=auto", *SETUP)
    straight = train_inproc(f"data.root={small_root}", "run.name=straight", *SETUP)
    assert resumed.exit_code == straight.exit_code == 0
    a, b = _weights(resumed.run_dir), _weights(straight.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for ra, rb in zip(resumed.state.rows, straight.state.rows, strict=True):
        assert {k: ra[k] for k in ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr")} == \
            pytest.approx({k: rb[k] for k in ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr")}, abs=1e-6)
