"""train/bench_augment.py runs end to end at tiny sizes and prints both transforms side by side."""

import json

from train import bench_augment


def test_bench_augment_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        bench_augment.main(
            [
                "--images",
                "3",
                "--width",
                "60",
                "--height",
                "45",
                "--crop",
                "16",
                "--rounds",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "tutorial" in printed and "ours" in printed and "× tutorial" in printed
    figures = json.loads(out.read_text())
    assert figures["ours"] > 0 and figures["tutorial"] > 0
    assert abs(figures["ours_vs_tutorial"] - figures["ours"] / figures["tutorial"]) < 1e-9
