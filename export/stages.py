"""The export pipeline in a private work folder: fp32 graph → fp16/int8 variants → engine, each gated.

Nothing reaches --out until its gate has passed; a failing variant is left out and the others still
go out. Every backend is a `logits = run(uint8 batch)` runner, so they are gated and timed alike.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.bundle import BundleRecord
from core.model_record import engine_sidecar_path, read_onnx_record, sha256_file
from export import onnx_export, verify
from export import report as rep
from export import variants as var
from export.bench import bench_all
from export.cli import ExportJob
from export.report import ExportReport
from export.samples import Samples

ENGINE_FILE = "model.engine"
RECORD_FIELDS = ("arch", "classes", "display_names", "preprocess", "head", "num_classes")


class GateFailed(Exception):
    """An exported format did not reproduce PyTorch; carries the parity figures for the report."""

    def __init__(self, fmt: str, parity: dict[str, Any], session=None):
        super().__init__(fmt)
        self.fmt, self.parity, self.session = fmt, parity, session


@dataclass
class Pipeline:
    """One export at work: the job as asked, what it loaded, and what passed or failed so far.

    `passed` collects the work files whose gate passed.
    """

    job: ExportJob
    bundle: Path
    out: Path
    work: Path
    model: torch.nn.Module
    record: BundleRecord
    samples: Samples
    calib: Samples | None = None  # for int8
    trt: Any = None  # tensorrt_engine.EngineOptions
    passed: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)
    runners: dict[str, Any] = field(default_factory=dict)


def run_relative(path: str | None, bundle: Path) -> str | None:
    """A path for a shipped file's facts: relative to the run folder, never a path of this machine."""
    if path is None:
        return None
    return os.path.relpath(Path(path).resolve(), Path(bundle).resolve().parent)


def log(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def gate_sizes(max_batch: int) -> list[int]:
    return sorted({b for b in (1, 7) if b <= max_batch} | {max_batch})


def gate_for(precision: str, max_int8_drop: float | None) -> verify.Gate:
    gate = verify.GATES[precision]
    if precision == "int8" and max_int8_drop is not None:
        gate = verify.Gate(gate.min_top1, gate.max_dprob, max_int8_drop)
    return gate


def report_key(precision: str) -> str:
    return "onnx" if precision == "fp32" else f"onnx.{precision}"


# ── gating ───────────────────────────────────────────────────────────────────────────────────────────


def record_mismatch(onnx_record: dict[str, Any], bundle_record: dict[str, Any]) -> list[str]:
    return [
        f"metadata {k} differs from the bundle's"
        for k in RECORD_FIELDS
        if onnx_record.get(k) != bundle_record.get(k)
    ]


def reference(model, record, samples) -> tuple[verify.Runner, torch.Tensor]:
    ref = verify.torch_runner(onnx_export.ExportGraph(model, record))
    return ref, verify.run_batched(ref, samples.images)


def gate_onnx(
    onnx_path: Path,
    precision: str,
    ref,
    ref_logits,
    samples,
    record: BundleRecord,
    job: ExportJob,
    report: ExportReport,
    bundle_record: BundleRecord | None = None,
):
    """Parity of onnxruntime with PyTorch fp32 on the samples, and of the embedded record with the bundle's.

    `record` supplies the preprocessing (with --verify-only: the ONNX's own, as serve will use it).
    Raises GateFailed; returns the onnxruntime session.
    """
    t = time.perf_counter()
    sess = verify.ort_session(onnx_path, job.provider, job.allow_cpu)
    parity = verify.verify(
        ref,
        verify.ort_runner(sess),
        samples,
        record.display_names,
        gate_for(precision, job.max_int8_drop),
        gate_sizes(job.max_batch),
        ref_logits,
    )
    onnx_record, _ = read_onnx_record(onnx_path)
    parity["failures"] += record_mismatch(onnx_record.to_dict(), (bundle_record or record).to_dict())
    parity["passed"] = not parity["failures"]
    parity.update(precision=precision, provider_requested=job.provider, providers=sess.get_providers())
    key = report_key(precision)
    report.times_s[f"verify_{key}"] = round(time.perf_counter() - t, 3)
    report.parity[key] = parity
    log(rep.parity_line(f"{var.FILES[precision]} [{', '.join(sess.get_providers())}]", parity))
    if not parity["passed"]:
        raise GateFailed(key, parity, sess)  # with its session: a failed variant is still timed
    return sess


# ── variants ─────────────────────────────────────────────────────────────────────────────────────────


def export_graph(pipe: Pipeline, precision: str, report: ExportReport) -> Path:
    job, dest = pipe.job, pipe.work / var.FILES[precision]
    log(
        f"exporting {pipe.record.arch} as {precision} with the {job.exporter} exporter, opset {job.opset} ..."
    )
    t = time.perf_counter()
    facts = onnx_export.export_onnx(
        pipe.model, pipe.record, pipe.bundle, dest, job.exporter, job.opset, job.probs, precision
    )
    report.times_s[f"export_{report_key(precision)}"] = round(time.perf_counter() - t, 3)
    report.export = report.export or facts
    log(f"{dest.name}: exported in {time.perf_counter() - t:.1f} s ({dest.stat().st_size / 2**20:.2f} MB)")
    return dest


def quantize(pipe: Pipeline, report: ExportReport) -> Path:
    """model.int8.onnx from the gated fp32 graph; its facts name the calibration set by fingerprint."""
    src, dest = pipe.passed["fp32"], pipe.work / var.FILES["int8"]
    calib, activations = pipe.calib, pipe.job.int8_activations
    log(
        f"quantizing to int8 ({activations} activations), calibrated on {len(calib.paths)} images "
        f"from {calib.root} ..."
    )
    t = time.perf_counter()
    quant = var.quantize_int8(src, dest, calib.images, activations)
    record, facts = read_onnx_record(src)
    facts.update(
        precision="int8",
        quantization=quant,
        int8_calibration={  # `calibration` means the temperature record everywhere else
            "images": len(calib.paths),
            "fingerprint": var.fingerprint(calib.images),
            "root": run_relative(calib.root, pipe.bundle),
            "source": calib.source,
        },
    )
    onnx_export.embed_metadata(dest, record, facts)
    report.times_s["export_onnx.int8"] = round(time.perf_counter() - t, 3)
    log(f"{dest.name}: quantized in {time.perf_counter() - t:.1f} s ({dest.stat().st_size / 2**20:.2f} MB)")
    return dest


def make_variant(pipe: Pipeline, precision: str, ref, ref_logits, report: ExportReport) -> None:
    """Make and gate one variant; fp32 failing stops everything, another failing is recorded and skipped."""
    path = quantize(pipe, report) if precision == "int8" else export_graph(pipe, precision, report)
    try:
        sess = gate_onnx(path, precision, ref, ref_logits, pipe.samples, pipe.record, pipe.job, report)
    except GateFailed as exc:
        if precision == "fp32":
            raise
        pipe.failed[precision] = exc.parity["failures"]
        log(
            f"{var.FILES[precision]} FAILED its gate and is not written: " + "; ".join(exc.parity["failures"])
        )
        for line in rep.divergence_lines(exc.parity):
            log(line)
        # still timed: the report shows what was given up
        pipe.runners[f"onnx {precision}"] = verify.ort_runner(exc.session)
        return
    pipe.passed[precision] = path
    pipe.runners[f"onnx {precision}"] = verify.ort_runner(sess)


# ── TensorRT ─────────────────────────────────────────────────────────────────────────────────────────


def tensorrt_stage(pipe: Pipeline, ref, ref_logits, report: ExportReport) -> None:
    from export import tensorrt_engine as te

    opts, record = pipe.trt, pipe.record
    source = pipe.passed.get(opts.source)
    if source is None:
        pipe.failed["tensorrt"] = [f"not built: its source {var.FILES[opts.source]} failed its gate"]
        return
    engine = pipe.work / ENGINE_FILE
    log(f"building TensorRT engine from {source.name} (strongly typed), profile {opts.profile()} ...")
    info = te.build_engine(source, engine, record.preprocess.crop, opts)
    report.times_s["tensorrt_build"] = info["build_s"]
    report.tensorrt = info
    side = te.sidecar(record.to_dict(), opts, source.name, sha256_file(source), pipe.bundle)
    engine_sidecar_path(engine).write_text(te.sidecar_json(side))
    runner = te.EngineRunner(engine.read_bytes())
    parity = verify.verify(
        ref,
        runner,
        pipe.samples,
        record.display_names,
        gate_for(opts.source, pipe.job.max_int8_drop),
        gate_sizes(pipe.job.max_batch),
        ref_logits,
    )
    report.parity["tensorrt"] = parity
    log(rep.parity_line(f"tensorrt from {source.name}", parity))
    if not parity["passed"]:
        pipe.failed["tensorrt"] = parity["failures"]
        return
    pipe.passed["tensorrt"] = engine
    pipe.runners["tensorrt"] = runner


# ── speed ────────────────────────────────────────────────────────────────────────────────────────────


def torch_bench_runner(model, record):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return verify.torch_runner(copy.deepcopy(onnx_export.ExportGraph(model, record)), device)


def run_bench(runners: dict[str, Any], images: torch.Tensor, max_batch: int, report: ExportReport) -> None:
    """Every runner on the same real images, taking turns in this run; ratios against ONNX fp32."""
    for name, b in bench_all(runners, images, max_batch).items():
        report.bench[name] = b
        log(
            f"speed {name}: batch 1 {b['batch1_latency_ms']:.2f} ms, best {b['best_images_per_s']:.0f} img/s "
            f"at batch {b['best_batch']}"
        )
    base = report.bench.get("onnx fp32", {}).get("best_images_per_s")
    for b in report.bench.values():
        b["vs_onnx_fp32"] = round(b["best_images_per_s"] / base, 3) if base else None


# ── the whole pipeline ───────────────────────────────────────────────────────────────────────────────


def run(pipe: Pipeline, report: ExportReport) -> None:
    """fp32 first (the others derive from it and share its reference), then the rest, then the engine."""
    ref, ref_logits = reference(pipe.model, pipe.record, pipe.samples)
    if pipe.job.bench:
        pipe.runners["torch fp32"] = torch_bench_runner(pipe.model, pipe.record)
    make_variant(pipe, "fp32", ref, ref_logits, report)
    for precision in pipe.job.precisions:
        if precision != "fp32":
            make_variant(pipe, precision, ref, ref_logits, report)
    if pipe.trt is not None:
        tensorrt_stage(pipe, ref, ref_logits, report)
    if pipe.job.bench:
        run_bench(pipe.runners, pipe.samples.images, pipe.job.max_batch, report)


WORK_PREFIX = ".export-work."
OWNED = (*var.FILES.values(), ENGINE_FILE, engine_sidecar_path(Path(ENGINE_FILE)).name)


def clear_leftovers(out: Path) -> list[str]:
    """Work folders an interrupted export left in --out. Called under --out's lock, so none is live."""
    stale = [p for p in out.glob(WORK_PREFIX + "*") if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return [f"removed {len(stale)} work folder(s) an interrupted export left in {out}"] if stale else []


def publish(pipe: Pipeline) -> list[Path]:
    """Rename the passed, asked-for files from the work folder into --out (each rename is atomic), then
    remove the model files this export did not write: a variant left from an earlier export would not
    match the new model.onnx beside it."""
    names = [var.FILES[p] for p in pipe.job.precisions if p in pipe.passed]
    if "tensorrt" in pipe.passed:
        names += [ENGINE_FILE, engine_sidecar_path(Path(ENGINE_FILE)).name]
    made = []
    for name in names:
        src = pipe.work / name
        with open(src, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(src, pipe.out / name)
        made.append(pipe.out / name)
    for name in OWNED:
        if name not in names and (pipe.out / name).exists():
            (pipe.out / name).unlink()
            log(f"removed {pipe.out / name}: left by an earlier export, it does not match this model")
    return made
