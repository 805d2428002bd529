"""Check every GPU path in one command: tests, decode parity and speed, benches, train → export → serve.

    python tools/gpu_check.py --out gpu-check            # on one H100/H200: ≤ 480 s (step limits add up to it)
    python tools/gpu_check.py --out /tmp/smoke --smoke   # same steps at tiny sizes, on a CPU (CI runs this)
    python tools/gpu_check.py --only train_bench_compile # torch.compile + bf16 + channels_last (not in the default run)

Each step runs in its own process with its own time limit, inside a total budget; a step that fails or
times out is recorded and the next one still runs, and its result is printed as it ends. Everything lands in
--out: `summary.json` (status, seconds and figures per step; rewritten after every step, so a run killed at
its limit still leaves what it measured) and `logs/<step>.log`. Exit 0 only when no step failed and one
passed. A step cannot pass by skipping: on CUDA a skipped `gpu` test other than TensorRT / onnxruntime-CUDA
fails pytest_gpu, and in a CPU smoke run pytest_gpu is `skipped`, never `pass`. Speed targets are reported
as met / missed, separately from pass / fail.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PY = sys.executable
PARTS = Path(__file__).resolve().with_name("gpu_check_parts.py")

# a sibling module: `python tools/gpu_check.py` puts tools/ first on sys.path
from gpu_check_runner import (  # noqa: E402
    Outcome,
    Step,
    StepFailed,
    StepSkipped,
    run_logged,
    run_steps,
)
from gpu_check_summary import (  # noqa: E402
    DEFAULT_BUDGET_S,
    NO_PYTEST,
    check_targets,
    disallowed_skips,
    last_line,
    select,
    summary_parts,
)  # the checks that run inside one process


def _args(text: str) -> list[str]:
    return text.split()


@dataclass
class Sizes:
    """Everything that differs between a real GPU check and the CPU smoke run."""

    decode_images: int
    decode_side: int
    bench_args: list[str]
    densenet_args: list[str]
    compile_args: list[str]
    serve_bench_args: list[str]
    demo_args: list[str]
    train_overrides: list[str]


GPU = Sizes(
    decode_images=256,
    decode_side=500,
    # --synthetic 1024: one prefetch runs over every epoch (train/bench.py), so the set's size no longer
    # cuts steady state; every bench step shares one cache of these images, made once (~12 ms each)
    bench_args=_args(
        "--models resnet50 --size 224 --batch-size 256 --amp --channels-last --steps 20 --warmup 6 "
        "--workers 8 --synthetic 1024 --image-size 500"
    ),
    densenet_args=_args(
        "--models densenet161 --freeze-backbone --size 224 --batch-size 128 --amp --channels-last --steps 15 "
        "--warmup 4 --workers 8 --synthetic 1024 --image-size 500 --paths model,gpu,tutorial"
    ),
    # the compiles (forward, backward) happen in the warmup steps
    compile_args=_args(
        "--models resnet50 --size 224 --batch-size 256 --amp --channels-last --compile --steps 20 --warmup 8 "
        "--workers 8 --synthetic 1024 --image-size 500 --paths model,gpu"
    ),
    serve_bench_args=["--n", "4096", "--side", "500", "--arch", "resnet50", "--size", "224"],
    demo_args=["--size", "128"],
    train_overrides=["train.epochs=2", "train.batch_size=32", "preprocess.resize=128", "preprocess.crop=112"],
)
SMOKE = Sizes(
    decode_images=8,
    decode_side=64,
    bench_args=["--smoke"],
    densenet_args=[],  # densenet161 is too big for a CPU smoke run; the resnet row covers the code path
    compile_args=[],  # inductor on 2 CPU cores takes minutes; the compile path is a GPU check
    serve_bench_args=["--smoke"],
    demo_args=["--size", "48"],
    train_overrides=[
        "train.epochs=2",
        "train.batch_size=8",
        "preprocess.resize=37",
        "preprocess.crop=32",
        "data.num_workers=0",
    ],
)


# ------------------------------------------------------------------------------ the steps' shared state


class Check:
    """State shared by the steps: sizes, output folders, the deadline of the step being run."""

    def __init__(self, out: Path, smoke: bool, cuda: bool):
        self.out, self.smoke, self.cuda = out, smoke, cuda
        self.sizes = SMOKE if smoke else GPU
        self.logs = out / "logs"
        self.work = out / "work"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.step = ""
        self.deadline = 0.0

    def sh(self, cmd: list[str], env: dict | None = None, ok_codes: tuple[int, ...] = (0,)) -> str:
        """Run one command for the current step, in its own process group, killed at the step's deadline."""
        return run_logged(cmd, self.logs / f"{self.step}.log", self.deadline, env, ok_codes)

    def py(self, *args: str, **kw) -> str:
        return self.sh([PY, *args], **kw)

    def json_of(self, path: Path) -> dict:
        return json.loads(path.read_text()) if path.is_file() else {}


# ------------------------------------------------------------------------------ steps

ENV_PROBE = """
import importlib.util, json, torch, torchvision, onnxruntime
cuda = torch.cuda.is_available()
print(json.dumps({
    "torch": torch.__version__, "torchvision": torchvision.__version__, "onnxruntime": onnxruntime.__version__,
    "ort_providers": onnxruntime.get_available_providers(), "cuda": cuda,
    "gpu": torch.cuda.get_device_name(0) if cuda else None,
    "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
    "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
    **{m: importlib.util.find_spec(m) is not None for m in ("onnxscript", "tensorrt", "pytest", "timm")}}))
"""


def step_env(c: Check) -> dict:
    facts = json.loads(c.py("-c", ENV_PROBE).strip().splitlines()[-1])
    if not c.smoke and not facts["cuda"]:
        raise StepFailed("no CUDA device visible: run with --smoke on a machine without a GPU")
    return facts


def step_pytest_gpu(c: Check) -> dict:
    if importlib.util.find_spec("pytest") is None:
        print(f"!!! {NO_PYTEST}", flush=True)
        raise StepSkipped(NO_PYTEST)
    text = c.py(
        "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider", "tests", ok_codes=(0, 1, 5)
    )
    last = text.strip().splitlines()[-1] if text.strip() else ""
    counts = {k: int(n) for n, k in (w.split() for w in summary_parts(last))}
    if counts.get("failed", 0) or counts.get("error", 0) or counts.get("errors", 0):
        raise StepFailed(f"pytest -m gpu: {last}")
    if c.smoke or not c.cuda:  # no GPU: every gpu test skipped, which proves nothing about a GPU
        raise StepSkipped(f"no CUDA device: the gpu tests cannot run here ({last})")
    if not counts.get("passed"):
        raise StepFailed(f"pytest -m gpu ran no GPU test on a GPU machine: {last}")
    bad = disallowed_skips(text)
    if bad:
        raise StepFailed(f"{len(bad)} gpu test(s) skipped on a GPU machine: " + " | ".join(bad[:3]))
    return counts


# 4:4:4: a correct fast-IDCT decoder sits near mean 1.0 (libjpeg-turbo's IFAST IDCT as a proxy: 0.995-1.016,
# reviews/sim-2026-12-b/emulate3.py), so 1.5. 4:2:0: nvJPEG's nearest chroma upsampling, ~4.9 emulated.
DECODE_MEAN_BOUNDS = {"444": 1.5, "420": 8.0}


def step_decode(c: Check) -> dict:
    out = c.work / "decode.json"
    c.py(
        str(PARTS),
        "decode",
        "--work",
        str(c.work),
        "--images",
        str(c.sizes.decode_images),
        "--side",
        str(c.sizes.decode_side),
    )
    figures = c.json_of(out)
    if c.cuda and figures.get("fallbacks", 0):
        raise StepFailed(
            f"nvJPEG did not decode every baseline JPEG: {figures['fallbacks']} fell back to the CPU"
        )
    # 4:4:4 has no chroma upsampling, so decoders agree; on 4:2:0 nvJPEG's default (nearest) chroma
    # upsampling differs from libjpeg's fancy upsampling: a realistic bound, not a tight one.
    for name, bound in DECODE_MEAN_BOUNDS.items():
        if figures.get(name, {}).get("mean_abs_diff", 0) > bound:
            raise StepFailed(
                f"{name} decode differs from PIL by mean {figures[name]['mean_abs_diff']} > {bound} levels"
            )
    return figures


def step_train_bench(c: Check, extra: list[str], name: str) -> dict:
    if not extra:
        raise StepSkipped("not in the smoke run (too big for a CPU); the resnet row covers the same code")
    out = c.work / f"{name}.json"
    # one cache for every bench step: the synthetic JPEGs are made once (~12 ms each)
    c.py("train/bench.py", *extra, "--cache", str(c.work / "bench-data"), "--out", str(out))
    return c.json_of(out).get("models", {})


def step_serve_bench(c: Check) -> dict:
    out = c.work / "serve_bench.json"
    text = c.py("serve/bench.py", *c.sizes.serve_bench_args, "--json", str(out))
    return c.json_of(out) or {"stdout_tail": text.strip().splitlines()[-3:]}


def _launch(c: Check) -> list[str]:
    # Explicit launcher settings: no "defaults were used" warnings, one process on the one device.
    return [
        PY,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


def step_train(c: Check) -> dict:
    data = c.work / "demo"
    if not (data / "train").is_dir():
        c.py("-m", "train.demo_data", str(data), *c.sizes.demo_args)
    c.sh(
        [
            *_launch(c),
            "train/main.py",
            "--config",
            "configs/demo.yaml",
            f"data.root={data}",
            "data.decode=gpu",
            f"run.output_dir={c.work / 'runs'}",
            "run.name=check",
            "train.resume=auto",
            *c.sizes.train_overrides,
        ]
    )
    reload = c.py(str(PARTS), "reload", "--work", str(c.work))
    figures = json.loads(reload.strip().splitlines()[-1])
    rows = list(csv.DictReader((c.work / "runs" / "check" / "metrics.csv").open()))
    figures.update({k: rows[-1].get(k) for k in ("valid_acc", "images_per_s") if k in rows[-1]})
    return figures


def _labels(path: Path) -> dict[str, str]:
    return {r["path"]: r["label"] for r in csv.DictReader(path.open()) if r["status"] == "ok"}


def _agreement(a: dict[str, str], b: dict[str, str]) -> float:
    shared = a.keys() & b.keys()
    if not shared:
        raise StepFailed("the two prediction files share no classified image")
    return sum(a[k] == b[k] for k in shared) / len(shared)


MIN_GPU_CPU_AGREEMENT = 0.99  # bf16 and nvJPEG's 4:2:0 chroma move a few borderline images, no more


def step_serve_agreement(c: Check) -> dict:
    bundle, test = c.work / "runs" / "check" / "best", c.work / "demo" / "test"
    figures = {}
    for device in ("cuda", "cpu") if c.cuda else ("cpu",):
        c.py(
            "serve/main.py",
            str(bundle),
            str(test),
            "--out",
            str(c.work / f"serve_{device}.csv"),
            "--overwrite",
            "--device",
            device,
        )
    if c.cuda:
        agree = _agreement(_labels(c.work / "serve_cuda.csv"), _labels(c.work / "serve_cpu.csv"))
        figures["top1_agreement_gpu_vs_cpu"] = agree
        if agree < MIN_GPU_CPU_AGREEMENT:
            raise StepFailed(
                f"GPU vs CPU serving agree on {agree:.1%} of top-1 labels < {MIN_GPU_CPU_AGREEMENT:.0%}"
            )
    figures["images"] = len(_labels(c.work / "serve_cpu.csv"))
    return figures


def step_export(c: Check) -> dict:
    bundle, out = c.work / "runs" / "check" / "best", c.work / "export"
    exporter = [] if importlib.util.find_spec("onnxscript") else ["--exporter", "torchscript"]
    speed = ["--no-bench"] if c.smoke else []  # the smoke run checks the code path, not a CPU's speed
    c.py(
        "export/main.py",
        str(bundle),
        "--out",
        str(out),
        "--precision",
        "fp32,fp16,int8",
        *exporter,
        *speed,
        ok_codes=(0, 1),
    )
    report = c.json_of(out / "export_report.json")
    written = sorted(p.name for p in out.glob("*.onnx"))
    if "model.onnx" not in written:
        raise StepFailed(f"no fp32 model.onnx written; see {out / 'export_report.json'}")
    # The ONNX file, served with the default flags, must work on this machine (CPU-only onnxruntime included).
    c.py(
        "serve/main.py",
        str(out / "model.onnx"),
        str(c.work / "demo" / "test"),
        "--out",
        str(c.work / "serve_onnx.csv"),
        "--overwrite",
    )
    agree = _agreement(_labels(c.work / "serve_onnx.csv"), _labels(c.work / "serve_cpu.csv"))
    return {"written": written, "status": report.get("status"), "onnx_vs_torch_top1": agree}


# Step limits on one H100 add up to DEFAULT_BUDGET_S (they were 790 s): env 60→20, pytest_gpu 150→100,
# decode 60→25, train_bench_resnet50 110→80 (20 steps, 1,024 images), train_bench_densenet 80→55 (15 steps,
# the same images), serve_bench 90→55, train_2_epochs 90→60, serve_gpu_vs_cpu 60→30, export 90→55.


def steps(c: Check) -> list[Step]:
    s = c.sizes
    plan = [
        Step("env", 20, step_env),
        Step("pytest_gpu", 100, step_pytest_gpu),
        Step("decode", 25, step_decode),
        Step("train_bench_resnet50", 80, lambda c: step_train_bench(c, s.bench_args, "train_bench_resnet50")),
        Step(
            "train_bench_densenet", 55, lambda c: step_train_bench(c, s.densenet_args, "train_bench_densenet")
        ),
        Step("serve_bench", 55, step_serve_bench),
        Step("train_2_epochs", 60, step_train),
        Step("serve_gpu_vs_cpu", 30, step_serve_agreement),
        Step("export", 55, step_export),
        Step(
            "train_bench_compile", 240, lambda c: step_train_bench(c, s.compile_args, "train_bench_compile")
        ),
    ]
    return plan


# ------------------------------------------------------------------------------ targets and summary


def summarize(args, check: Check, budget: float, t0: float, outcomes: list[Outcome]) -> dict:
    """summary.json's content; pass/fail (`ok`) and the speed targets (`targets`) kept apart."""
    return {
        "mode": "smoke" if args.smoke else "gpu",
        "cuda": check.cuda,
        "budget_s": budget,
        "total_s": round(time.monotonic() - t0, 1),
        "ok": all(o.status in ("pass", "skipped") for o in outcomes)
        and any(o.status == "pass" for o in outcomes),
        "steps": [asdict(o) for o in outcomes],
        "targets": {} if args.smoke else check_targets({o.name: o.figures for o in outcomes}),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu-check", help="folder for summary.json, logs/ and work files")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed (CI)")
    ap.add_argument("--budget", type=float, help="total seconds (default 480 on a GPU, 180 in --smoke)")
    ap.add_argument(
        "--only",
        help="comma-separated step names to run (default: all but train_bench_compile, run only when named)",
    )
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    import torch  # after parsing: --help stays fast

    check = Check(out, args.smoke, torch.cuda.is_available())
    plan = select(steps(check), args.only)
    budget = args.budget or (180.0 if args.smoke else DEFAULT_BUDGET_S)
    print(
        f"gpu_check: {'smoke' if args.smoke else 'full'} run, {len(plan)} steps, budget {budget:.0f} s, "
        f"cuda {check.cuda}, out {out}",
        flush=True,
    )
    t0 = time.monotonic()

    def write(outcomes: list[Outcome]) -> dict:
        summary = summarize(args, check, budget, t0, outcomes)
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, out / "summary.json")  # a reader (or a kill) never sees half a file
        return summary

    summary = write(run_steps(check, plan, budget, after=write))
    print(last_line(summary, out), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
