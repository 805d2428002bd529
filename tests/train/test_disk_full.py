"""M24: a full disk during training is one line naming the file, exit 2; what was written before stays."""

from __future__ import annotations

import errno

import pytest

from tests.train.helpers import DEMO_RECIPE, TINY


def test_m24_train_disk_full_is_one_line_naming_the_file(small_root, tmp_path, monkeypatch, capsys):
    import train.engine as engine
    from train.main import main

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")

    def full(rows, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(engine, "write_metrics_csv", full)
    runs = tmp_path / "runs"
    argv = [
        "--config",
        str(DEMO_RECIPE),
        f"data.root={small_root}",
        f"run.output_dir={runs}",
        "train.epochs=1",
    ]
    argv += ["model.arch=cifar_cnn", "run.name=full", *TINY]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: disk full writing ") and "metrics.csv" in lines[-1], lines
    assert not any("Traceback" in line for line in lines)
