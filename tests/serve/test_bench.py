"""bench.py runs on the CPU and reports every stage next to the naive baseline."""
from __future__ import annotations

import re


def test_bench_reports_each_stage_and_the_baseline(capsys):
    from serve.bench import main

    assert main(["--images", "6", "--image-size", "60", "--arch", "cifar_cnn", "--size", "32",
                 "--workers", "0", "--batch-size", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("6 images in ")
    for stage in ("discovery", "decode, CPU path", "model only", "end to end", "naive baseline"):
        assert re.search(rf"^{re.escape(stage)}.*\s[\d,]+$", out, re.MULTILINE), (stage, out)
    assert re.search(r"end to end vs naive: \d+\.\d\dx", out)
